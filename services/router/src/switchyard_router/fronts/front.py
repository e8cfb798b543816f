"""What a front hands the router's request path, and what it gets back.

A front is where requests come in: the gRPC LLMService today (``grpc_front``), an
HTTP front next. It translates its request at the edge into an :class:`Inbound` (the
bytes of a GenerateRequest or StreamGenerateRequest, the caller's metadata and time
left) and a :class:`ResponseSink` (where response messages go), then calls
``Proxy.handle``. Admission, the picker, retries and resume are the same for every
front; nothing past this module knows which protocol the caller speaks.

The contract of ``Proxy.handle(inbound, sink)``:

- each response message goes to ``sink.send`` as the model server's bytes (one for
  Generate, the stream's messages in order for StreamGenerate); response metadata
  the router adds (``x-switchyard-cache: hit`` on an answer replayed from the cache)
  goes to ``sink.send_headers`` before the first message;
- it returns when the request is answered: the front finishes the call;
- it raises ``StatusError`` when the request fails (``UpstreamStatusError`` when it relays a
  model server's status, whose trailers the front may pass on unchanged), possibly
  after messages were sent: the front ends the call with that status;
- a caller that leaves cancels the task running it (``CancelledError``), which stops
  the upstream call and so the generation on the model server.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from switchyard_common.status import StatusError

Metadata = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A request as it reaches the router's core, whichever front received it."""

    streaming: bool
    """StreamGenerate (True) or Generate (False)."""
    request: bytes
    """The serialized GenerateRequest or StreamGenerateRequest, never parsed on the hot path."""
    metadata: Collection[Any]
    """The caller's metadata as (key, value) pairs: API key, trace context, and what is
    forwarded to the model server."""
    time_remaining: Callable[[], float | None]
    """Seconds the caller still gives the request (None: no deadline)."""
    span_attributes: Mapping[str, str]
    """Attributes of the request's span that describe the front (``rpc.system``, ...)."""
    counts_tokens: bool = False
    """CountTokens (unary, relayed like Generate: its request has the model in field 1 too)."""

    @property
    def method(self) -> str:
        """The LLMService method, for metrics and logs."""
        if self.counts_tokens:
            return "CountTokens"
        return "StreamGenerate" if self.streaming else "Generate"


class ResponseSink(Protocol):
    """Where a request's response messages go, supplied by its front."""

    async def send(self, message: bytes) -> None:
        """Delivers one response message (its bytes as the model server sent them)."""
        ...

    async def send_headers(self, headers: Metadata) -> None:
        """Sends response metadata (gRPC initial metadata, HTTP headers) before any
        message; called at most once."""
        ...


class UpstreamStatusError(StatusError):
    """A model server's final status, relayed: ``trailers`` are the model server's own
    (its ``google.rpc`` details included), for the front to pass on as they came."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: Metadata) -> None:
        super().__init__(code, message)
        self.trailers = trailers
