"""The HTTP front's application: OpenAI- and Anthropic-compatible endpoints that enter
the router's own request path (``Proxy.handle``), plus health for load balancers.

It is an RSGI application (granian's interface; ``listener`` serves it in the router's
event loop). Each generation request is translated at the edge (``openai``,
``anthropic``: JSON in, the contract's request bytes out), then handed to the same
admission and attempt loop as a gRPC call: keys, limits, routes, picker, retries,
resume and tracing are the router's, with no second network hop. Response messages
come back as the model server's bytes and leave as the vendor's JSON or events.

- Keys: ``Authorization: Bearer <key>`` or Anthropic's ``x-api-key: <key>`` are the
  router's API keys; W3C ``traceparent`` / ``tracestate`` continue the caller's trace;
  a header named by a route's ``affinity.session_metadata_key`` is its session.
- Deadline: HTTP has no standard one; ``x-switchyard-timeout: <seconds>`` sets it,
  and the router stops the generation when it passes (504), as with a gRPC deadline.
- A stream's status is sent with its first message: a request that fails before
  any is an HTTP error answer; after, an error event in the vendor's shape.
- A caller that disconnects cancels the request, which stops the generation on the
  model server.
- While the router drains, ``/readyz`` answers 503 and new requests get 503
  (SHUTTING_DOWN, ``retry-after``); requests in flight finish, then the listener closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import StatusError, model_not_found
from switchyard_router.fronts.front import Inbound, Metadata
from switchyard_router.http_api import anthropic, openai
from switchyard_router.http_api.api import Api, ApiCall
from switchyard_router.http_api.errors import HttpError, bad_field, body_too_large
from switchyard_router.http_api.json_body import encode
from switchyard_router.metrics import RequestRecord
from switchyard_router.request_path.proxy import Proxy

log = logging.getLogger("switchyard.router.http")

ListModels = Callable[[Iterable[Any], float | None], Awaitable[pb.ListModelsResponse]]
"""ListModels for a caller's metadata and time left (``Router.list_models``)."""

_JSON = [("content-type", "application/json")]
_EVENTS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
_APIS: dict[str, Api] = {
    "/v1/chat/completions": openai.CHAT_COMPLETIONS,
    "/v1/completions": openai.COMPLETIONS,
    "/v1/messages": anthropic.MESSAGES,
    "/v1/messages/count_tokens": anthropic.TOKEN_COUNT,
}
_OPENAI = _APIS["/v1/chat/completions"]
_ANTHROPIC = _APIS["/v1/messages"]
_SPAN_ATTRIBUTES = {
    path: {"http.request.method": "POST", "http.route": path, "url.path": path} for path in _APIS
}
# Trace context, and cache-control for the response cache (no-cache, no-store).
_FORWARDED_HEADERS = ("traceparent", "tracestate", "cache-control")
_INTERNAL = StatusError(
    grpc.StatusCode.INTERNAL, "internal error in the router; its log has the traceback"
)
# While the router drains, the listener stays open (load balancers read /readyz) and
# new requests are told to go elsewhere.
_SHUTTING_DOWN = StatusError(
    grpc.StatusCode.UNAVAILABLE,
    "the router is shutting down; retry on another replica",
    reason="SHUTTING_DOWN",
    retry_after=1.0,
)


def _as_http(headers: Metadata) -> list[tuple[str, str]]:
    return [(k, v if isinstance(v, str) else v.decode("latin-1")) for k, v in headers]


class _Answer:
    """Keeps a unary request's one response (and the headers the router adds to it)."""

    __slots__ = ("headers", "response")

    def __init__(self) -> None:
        self.response = b""
        self.headers = _JSON

    async def send(self, message: bytes) -> None:
        self.response = message

    async def send_headers(self, headers: Metadata) -> None:
        self.headers = _JSON + _as_http(headers)


class _EventStream:
    """Sends a stream's messages as server-sent events; the response starts (200)
    with the first message, so that a failure before it is a plain HTTP error."""

    __slots__ = ("_call", "_headers", "_protocol", "transport")

    def __init__(self, protocol: Any, call: ApiCall) -> None:
        self._protocol = protocol
        self._call = call
        self._headers = _EVENTS
        self.transport: Any = None

    async def send_headers(self, headers: Metadata) -> None:
        self._headers = _EVENTS + _as_http(headers)

    async def send(self, message: bytes) -> None:
        events = self._call.message(message)
        if self.transport is None:
            self.transport = self._protocol.response_stream(200, self._headers)
            events = self._call.opening() + events
        if events:
            await self.write(events)

    async def write(self, events: bytes) -> None:
        try:
            await self.transport.send_bytes(events)
        except RuntimeError:  # granian's RSGIProtocolClosed: the caller left
            await _caller_left()

    async def finish(self, events: bytes) -> None:
        """Sends a stream's last events (the response starts here if it has not)."""
        if self.transport is None:
            self.transport = self._protocol.response_stream(200, self._headers)
            events = self._call.opening() + events
        if events:
            with contextlib.suppress(RuntimeError):  # the caller left: it misses only the end
                await self.transport.send_bytes(events)


async def _caller_left() -> None:
    """Cancels the request's task, as the front contract says a caller leaving does
    (the next await raises CancelledError: the upstream call stops)."""
    task = asyncio.current_task()
    if task is not None:
        task.cancel()
    await asyncio.sleep(0)


class HttpApp:
    """The RSGI application of the HTTP front."""

    def __init__(
        self,
        proxy: Proxy,
        list_models: ListModels,
        ready: Callable[[], bool],
        max_body_bytes: int,
    ) -> None:
        self.proxy = proxy
        self.list_models = list_models
        self.ready = ready
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        path: str = scope.path
        method: str = scope.method
        api = _APIS.get(path)
        try:
            if api is not None:
                if method != "POST":
                    raise _method_not_allowed(method, path, "POST")
                await self._generate(api, path, scope, protocol)
            elif path in ("/healthz", "/readyz"):
                self._health(path, protocol)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise _method_not_allowed(method, path, "GET")
                await self._models(path, scope, protocol)
            else:
                raise StatusError(
                    grpc.StatusCode.NOT_FOUND,
                    f"no such endpoint: {method} {path} (the API: POST /v1/chat/completions, "
                    "POST /v1/completions, POST /v1/messages, POST /v1/messages/count_tokens, "
                    "GET /v1/models)",
                    reason="NO_SUCH_ENDPOINT",
                )
        except _MethodNotAllowedError as refusal:
            _respond(protocol, _OPENAI.error(refusal.error), refusal.status, refusal.allow)
        except StatusError as error:
            _respond(protocol, _api_of(path, scope).error(error))
        except Exception:
            log.exception("HTTP %s %s failed", method, path)
            _respond(protocol, _api_of(path, scope).error(_INTERNAL))

    async def _generate(self, api: Api, path: str, scope: Any, protocol: Any) -> None:
        headers = scope.headers
        try:
            if not self.ready():
                raise _SHUTTING_DOWN
            body = await self._body(headers, protocol)
            call = api.call(body)
            time_remaining = _time_remaining(headers)
        except StatusError as error:  # refused before the router's own path: count it here
            record = RequestRecord("Generate")
            record.code = error.code.name
            record.finish()
            raise
        inbound = Inbound(
            call.streaming,
            call.request,
            _metadata(headers, self.proxy.table.session_keys),
            time_remaining,
            _SPAN_ATTRIBUTES[path],
            call.counts_tokens,
        )
        sink: _EventStream | _Answer = _EventStream(protocol, call) if call.streaming else _Answer()
        watch = _watch_disconnect(protocol)
        try:
            await self.proxy.handle(inbound, sink)
        except StatusError as error:
            if isinstance(sink, _Answer) or sink.transport is None:
                raise
            await sink.finish(call.failure(error))
            return
        except asyncio.CancelledError:
            return  # the caller left: there is no one to answer
        except Exception:
            if isinstance(sink, _Answer) or sink.transport is None:
                raise
            log.exception("HTTP stream on %s failed", path)
            await sink.finish(call.failure(_INTERNAL))
            return
        finally:
            watch()
        if isinstance(sink, _Answer):
            protocol.response_bytes(200, sink.headers, call.answer(sink.response))
            return
        await sink.finish(call.closing())  # an empty stream gets its response too

    async def _body(self, headers: Any, protocol: Any) -> bytes:
        """The request body, refused (before it is read) past ``max_body_bytes``."""
        limit = self.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit():
            if int(length) > limit:
                raise body_too_large(f"is {length} bytes; at most {limit}")
            body: bytes = await protocol()
            return body
        chunks = []
        size = 0
        async for chunk in protocol:
            size += len(chunk)
            if size > limit:
                raise body_too_large(f"is more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _health(self, path: str, protocol: Any) -> None:
        if path == "/readyz" and not self.ready():
            protocol.response_bytes(503, _JSON, b'{"status":"not ready"}')
            return
        protocol.response_bytes(200, _JSON, b'{"status":"ok"}')

    async def _models(self, path: str, scope: Any, protocol: Any) -> None:
        headers = scope.headers
        anthropic_caller = "anthropic-version" in headers
        listing = await self.list_models(_metadata(headers), _time_remaining(headers)())
        vendor = anthropic if anthropic_caller else openai
        if path == "/v1/models":
            protocol.response_bytes(200, _JSON, vendor.model_list(listing))
            return
        wanted = path.removeprefix("/v1/models/")
        for model in listing.models:
            if model.id == wanted:
                body = encode(vendor.model_object(model))
                protocol.response_bytes(200, _JSON, body)
                return
        raise model_not_found(wanted, [m.id for m in listing.models])


def _api_of(path: str, scope: Any) -> Api:
    """The API whose error shape a caller expects."""
    if path.startswith("/v1/messages") or (
        path.startswith("/v1/models") and "anthropic-version" in scope.headers
    ):
        return _ANTHROPIC
    return _APIS.get(path, _OPENAI)


def _respond(
    protocol: Any, error: HttpError, status: int | None = None, allow: str | None = None
) -> None:
    headers = error.headers if allow is None else [*error.headers, ("allow", allow)]
    protocol.response_bytes(status or error.status, headers, error.body)


class _MethodNotAllowedError(Exception):
    status = 405

    def __init__(self, error: StatusError, allow: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.allow = allow


def _method_not_allowed(method: str, path: str, allow: str) -> _MethodNotAllowedError:
    error = StatusError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{method} is not allowed on {path}; use {allow}",
        reason="METHOD_NOT_ALLOWED",
    )
    return _MethodNotAllowedError(error, allow)


def _metadata(headers: Any, session_keys: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The request's metadata as the router's core reads it: the API key as
    ``authorization: Bearer <key>`` (from ``x-api-key`` too), the trace context,
    ``cache-control`` and the routes' session headers (``session_keys``)."""
    metadata = []
    authorization = headers.get("authorization")
    if authorization is None:
        api_key = headers.get("x-api-key")
        if api_key is not None:
            authorization = f"Bearer {api_key}"
    if authorization is not None:
        metadata.append(("authorization", authorization))
    for names in (_FORWARDED_HEADERS, session_keys):
        for name in names:
            value = headers.get(name)
            if value is not None:
                metadata.append((name, value))
    return metadata


def _no_deadline() -> None:
    return None


def _time_remaining(headers: Any) -> Callable[[], float | None]:
    """Time left before the caller's ``x-switchyard-timeout`` passes (None: no deadline)."""
    timeout = headers.get("x-switchyard-timeout")
    if timeout is None:
        return _no_deadline
    try:
        seconds = float(timeout)
    except ValueError:
        raise bad_field("x-switchyard-timeout", "must be a number of seconds") from None
    if not seconds > 0:
        raise bad_field("x-switchyard-timeout", "must be more than 0 seconds")
    deadline = time.monotonic() + seconds
    return lambda: deadline - time.monotonic()


def _watch_disconnect(protocol: Any) -> Callable[[], None]:
    """Cancels the running task if the caller disconnects; returns what stops watching."""
    task = asyncio.current_task()
    disconnected = asyncio.ensure_future(protocol.client_disconnect())

    def left(_: asyncio.Future[None]) -> None:
        if task is not None:
            task.cancel()

    disconnected.add_done_callback(left)

    def stop() -> None:
        disconnected.remove_done_callback(left)
        disconnected.cancel()

    return stop
