"""The one place where an exception becomes the gRPC status that ends a call.

Code inside the model server raises :class:`StatusError`; the boundary around
each generation handler ends the call with :func:`switchyard_common.status.abort`
(the one way to end a call), turns a passed deadline into DEADLINE_EXCEEDED and
anything unexpected into INTERNAL (logged here, never shown to the caller), and
then, however the call ended, ends the request's telemetry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio

from switchyard_common.status import StatusError, abort
from switchyard_modelserver.request_telemetry import RequestTelemetry

log = logging.getLogger("switchyard.modelserver.requests")


@asynccontextmanager
async def status_boundary(
    context: grpc.aio.ServicerContext[Any, Any], telemetry: RequestTelemetry
) -> AsyncIterator[None]:
    """Ends the call with the status of what was raised inside (if anything), then
    ends ``telemetry`` (spans, metrics, access-log line) with that status."""
    try:
        yield
    except StatusError as error:
        telemetry.code = error.code.name
        await abort(context, error)
    except TimeoutError:
        telemetry.code = "DEADLINE_EXCEEDED"
        await abort(
            context,
            StatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded after {telemetry.completion_tokens} generated tokens",
            ),
        )
    except asyncio.CancelledError:
        telemetry.code = "CANCELLED"
        raise
    except Exception:
        if context.done():  # the call already ended (e.g. a write after the client left)
            telemetry.code = "CANCELLED"
            raise
        telemetry.code = "INTERNAL"
        log.exception("unexpected error in %s for model %s", telemetry.method, telemetry.model)
        await abort(
            context,
            StatusError(
                grpc.StatusCode.INTERNAL, "internal error in the model server; see its log"
            ),
        )
    finally:
        telemetry.end_spans_count_and_log()
