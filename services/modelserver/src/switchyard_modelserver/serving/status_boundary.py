"""The one place where an exception becomes the gRPC status that ends a call.

Code inside the model server raises :class:`StatusError`; the boundary around
each generation handler ends the call with :func:`switchyard_common.status.abort`
(the one way to end a call), turns a passed deadline into DEADLINE_EXCEEDED and
anything unexpected into INTERNAL (logged here, never shown to the caller), adds
the trailers every call ends with (the load report), and then, however the call
ended, ends the request's telemetry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from switchyard_common.status import StatusError, abort, call_ended
from switchyard_modelserver.telemetry.request_telemetry import RequestTelemetry

log = logging.getLogger("switchyard.modelserver.requests")


Trailers = Callable[[], tuple[tuple[str, bytes], ...]]


@asynccontextmanager
async def status_boundary(
    context: grpc.aio.ServicerContext[Any, Any],
    telemetry: RequestTelemetry,
    trailers: Trailers | None = None,
) -> AsyncIterator[None]:
    """Ends the call with the status of what was raised inside (if anything), then
    ends ``telemetry`` (spans, metrics, access-log line) with that status.

    ``trailers`` gives trailing metadata for the end of the call, whatever its
    status (the server's load report: ``load_reporting``); it is asked as the call
    leaves, so what it reports no longer counts the call."""
    extra = trailers or _none
    try:
        yield
        context.set_trailing_metadata(extra())
    except StatusError as error:
        telemetry.code = error.code.name
        await _abort(context, error, extra)
    except TimeoutError:
        telemetry.code = "DEADLINE_EXCEEDED"
        await _abort(
            context,
            StatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded after {telemetry.completion_tokens} generated tokens",
            ),
            extra,
        )
    except asyncio.CancelledError:
        telemetry.code = "CANCELLED"
        raise
    except Exception as error:
        if context.done() or call_ended(error):  # e.g. a write after the caller left
            remaining = context.time_remaining()
            ended_by_deadline = remaining is not None and remaining <= 0
            telemetry.code = "DEADLINE_EXCEEDED" if ended_by_deadline else "CANCELLED"
            raise
        telemetry.code = "INTERNAL"
        log.exception("unexpected error in %s for model %s", telemetry.method, telemetry.model)
        await _abort(
            context,
            StatusError(
                grpc.StatusCode.INTERNAL, "internal error in the model server; see its log"
            ),
            extra,
        )
    finally:
        telemetry.end_spans_count_and_log()


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], error: StatusError, extra: Trailers
) -> None:
    """Ends the call with ``error``, its details and the ``extra`` trailers."""
    await abort(context, error, (*error.trailing_metadata(), *extra()))


def _none() -> tuple[tuple[str, bytes], ...]:
    return ()
