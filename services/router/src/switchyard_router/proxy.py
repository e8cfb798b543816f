"""The router's hot path: forward Generate and StreamGenerate as raw bytes.

Requests are never parsed: the router reads the model name from the wire
(`wire.read_model`) and relays request and response bytes untouched, which is
what keeps a Python hop cheap (see DESIGN.md, performance facts). Deadlines
propagate as the upstream call's timeout; a client that cancels cancels the
upstream call, which stops generation on the model server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import grpc.aio

from switchyard.status import DETAILS_METADATA_KEY, FieldViolation, StatusError, invalid_argument
from switchyard_router import wire
from switchyard_router.routing import Pick, RouteTable

log = logging.getLogger("switchyard.router.proxy")

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = tuple[tuple[str, str | bytes], ...]

# Headers that belong to the hop, not the request; everything else (trace
# context, caller credentials, custom metadata) travels on to the model server.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "grpc-accept-encoding"})


def _forwarded(metadata: Iterable[Any] | None) -> Metadata:
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if key not in _HOP_HEADERS and not key.startswith((":", "grpc-"))
    )


def _upstream_trailers(error: grpc.aio.AioRpcError) -> Metadata:
    trailers: Iterable[Any] = error.trailing_metadata() or ()
    return tuple(
        (key, value)
        for key, value in trailers
        if key == DETAILS_METADATA_KEY or not key.startswith((":", "grpc-"))
    )


class Proxy:
    """Forwards LLMService calls to the endpoint each route picks."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table

    def _pick(self, request: bytes) -> tuple[Pick, bytes]:
        try:
            model = wire.read_model(request)
        except wire.MalformedRequestError as error:
            raise invalid_argument(
                FieldViolation("model", f"unreadable request: {error}")
            ) from None
        pick = self.table.pick(model)
        payload = request if pick.model == model else wire.with_model(request, pick.model)
        return pick, payload

    async def generate(self, request: bytes, context: Context) -> bytes:
        """Generate, relayed."""
        try:
            pick, payload = self._pick(request)
        except StatusError as error:
            await context.abort(
                error.code, error.message, trailing_metadata=error.trailing_metadata()
            )
        pick.endpoint.outstanding += 1
        try:
            response: bytes = await pick.endpoint.generate(
                payload,
                timeout=context.time_remaining(),
                metadata=_forwarded(context.invocation_metadata()),
            )
            return response
        except grpc.aio.AioRpcError as error:
            await self._abort_upstream(context, error, pick)
            raise  # unreachable: abort raises
        finally:
            pick.endpoint.outstanding -= 1

    async def stream_generate(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        """StreamGenerate, relayed message by message."""
        try:
            pick, payload = self._pick(request)
        except StatusError as error:
            await context.abort(
                error.code, error.message, trailing_metadata=error.trailing_metadata()
            )
        pick.endpoint.outstanding += 1
        call = pick.endpoint.stream_generate(
            payload,
            timeout=context.time_remaining(),
            metadata=_forwarded(context.invocation_metadata()),
        )
        try:
            async for message in call:
                yield message
        except grpc.aio.AioRpcError as error:
            await self._abort_upstream(context, error, pick)
        finally:
            pick.endpoint.outstanding -= 1
            call.cancel()  # the client left or failed: stop the generation upstream

    async def _abort_upstream(
        self, context: Context, error: grpc.aio.AioRpcError, pick: Pick
    ) -> None:
        code = error.code()
        details = error.details() or ""
        trailers = _upstream_trailers(error)
        if code == grpc.StatusCode.UNAVAILABLE and not any(
            k == DETAILS_METADATA_KEY for k, _ in trailers
        ):
            # A connection failure, not the model server's own answer: say where.
            details = (
                f"model server {pick.endpoint.address} (cluster {pick.cluster}) for model "
                f"{pick.model} is unavailable: {details}"
            )
        log.info("upstream %s answered %s: %s", pick.endpoint.address, code.name, details)
        await context.abort(code, details, trailing_metadata=trailers)
