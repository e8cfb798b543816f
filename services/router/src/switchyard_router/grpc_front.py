"""The gRPC front: LLMService's Generate and StreamGenerate, bytes in and bytes out,
handed to the router's request path (``Proxy.handle``).

Everything gRPC-specific about the caller's side stays here: reading the
invocation metadata and deadline, writing stream messages with
``context.write`` (the relayed bytes go out as they are: the method handlers
have no serializers), and ending a failed call with ``status.abort``.
"""

from __future__ import annotations

from typing import Any

import grpc.aio

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common import tracing
from switchyard_common.status import StatusError, abort
from switchyard_router.front import Inbound, UpstreamStatusError
from switchyard_router.proxy import Proxy

Context = grpc.aio.ServicerContext[Any, Any]

_SERVICE = pb.DESCRIPTOR.services_by_name["LLMService"].full_name
_SPAN_ATTRIBUTES = {
    method: tracing.rpc_attributes(_SERVICE, method)
    for method in ("Generate", "StreamGenerate", "CountTokens")
}


class _UnaryAnswer:
    """Keeps a Generate call's one response for the handler to return."""

    __slots__ = ("response", "send_headers")

    def __init__(self, context: Context) -> None:
        self.response = b""
        self.send_headers = context.send_initial_metadata

    async def send(self, message: bytes) -> None:
        self.response = message


class _StreamToCaller:
    """Writes each StreamGenerate message straight to the caller."""

    __slots__ = ("send", "send_headers")

    def __init__(self, context: Context) -> None:
        self.send = context.write  # no wrapper: this runs once per relayed message
        self.send_headers = context.send_initial_metadata


class GrpcFront:
    """The LLMService method handlers for Generate, StreamGenerate and CountTokens."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def generate(self, request: bytes, context: Context) -> bytes:
        """Generate (unary)."""
        answer = _UnaryAnswer(context)
        await self._handle(_inbound(False, request, context), answer, context)
        return answer.response

    async def stream_generate(self, request: bytes, context: Context) -> None:
        """StreamGenerate: messages are written as they arrive from the model server."""
        await self._handle(_inbound(True, request, context), _StreamToCaller(context), context)

    async def count_tokens(self, request: bytes, context: Context) -> bytes:
        """CountTokens (unary), relayed like Generate."""
        answer = _UnaryAnswer(context)
        inbound = _inbound(False, request, context, counts_tokens=True)
        await self._handle(inbound, answer, context)
        return answer.response

    async def _handle(
        self, inbound: Inbound, sink: _UnaryAnswer | _StreamToCaller, context: Context
    ) -> None:
        try:
            await self.proxy.handle(inbound, sink)
        except UpstreamStatusError as error:
            await abort(context, error, error.trailers)
        except StatusError as error:
            await abort(context, error)


def _inbound(
    streaming: bool, request: bytes, context: Context, *, counts_tokens: bool = False
) -> Inbound:
    method = "CountTokens" if counts_tokens else "StreamGenerate" if streaming else "Generate"
    return Inbound(
        streaming,
        request,
        context.invocation_metadata() or (),
        context.time_remaining,
        _SPAN_ATTRIBUTES[method],
        counts_tokens,
    )
