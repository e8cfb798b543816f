"""The router's hot path: forward Generate and StreamGenerate as raw bytes.

Requests are never parsed: the router reads the model name from the wire
(`wire.read_model`) and relays request and response bytes untouched, which is
what keeps a Python hop cheap (see docs/architecture.md, performance facts). Deadlines
propagate as each attempt's timeout; a client that cancels cancels the
upstream call, which stops generation on the model server.

Failures another model server can fix are retried there (``retry``). A stream
is retried transparently until its first message; after that, a route with
``resume`` continues the generation elsewhere from the text and token ids
already sent (the only path that parses responses), and one without it ends
with a clean UNAVAILABLE.

With ``auth`` configured, each call is first checked against the API keys
(``auth``) and the key's rate limits (``quota``); model tokens are charged
from the usage in the answer, read from its bytes (``wire.read_usage_tokens``).
Without it, none of that code runs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common import status, tracing
from switchyard_common.status import (
    DETAILS_METADATA_KEY,
    FieldViolation,
    StatusError,
    invalid_argument,
)
from switchyard_router import wire
from switchyard_router.auth import AUTHORIZATION, Guard
from switchyard_router.config import RetryConfig, RouterLimitsConfig
from switchyard_router.endpoints import Endpoint
from switchyard_router.metrics import RESUMES, RETRIES, RequestRecord
from switchyard_router.quota import KeyLimiter
from switchyard_router.retry import RETRYABLE, RetryBudget
from switchyard_router.routing import Pick, Route, RouteTable, describe_unavailable

log = logging.getLogger("switchyard.router.proxy")


@functools.cache
def _tracer() -> Any:
    return tracing.tracer("switchyard.router")


Context = grpc.aio.ServicerContext[Any, Any]
Metadata = tuple[tuple[str, str | bytes], ...]

# Headers that belong to the hop, not the request; everything else (trace
# context, caller credentials, custom metadata) travels on to the model server.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "grpc-accept-encoding"})
# With auth on, the caller's API key is the router's, not the model server's.
_HOP_HEADERS_WITH_AUTH = _HOP_HEADERS | {AUTHORIZATION}
_WANT_TOKEN_IDS = pb.StreamGenerateRequest(include_token_ids=True).SerializeToString()


def _forwarded(metadata: Iterable[Any] | None, hop: frozenset[str] = _HOP_HEADERS) -> Metadata:
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if key not in hop and not key.startswith((":", "grpc-"))
    )


def _upstream_trailers(error: grpc.aio.AioRpcError) -> Metadata:
    trailers: Iterable[Any] = error.trailing_metadata() or ()
    return tuple(
        (key, value)
        for key, value in trailers
        if key == DETAILS_METADATA_KEY or not key.startswith((":", "grpc-"))
    )


@dataclass
class _Failure:
    """The last failed attempt, for the final status if no retry succeeds."""

    code: grpc.StatusCode
    details: str
    trailers: Metadata = ()


@dataclass
class _Resumable:
    """What a resume needs: the text and token ids delivered so far."""

    client_wants_token_ids: bool
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    source: tuple[str, str] | None = None
    """(cluster, model) that produced the token ids; other targets get text only."""
    resumes: int = 0
    finished: bool = False

    def continuation(self, pick: Pick) -> bytes:
        if not self.text and not self.token_ids:
            return b""
        same_model = self.source == (pick.cluster, pick.model)
        continuation = pb.Continuation(
            text="".join(self.text), token_ids=self.token_ids if same_model else ()
        )
        return pb.StreamGenerateRequest(continuation=continuation).SerializeToString()

    def relay(self, message: bytes, pick: Pick) -> bytes:
        """Records a message's text and token ids; returns what the client gets."""
        parsed = pb.StreamGenerateResponse.FromString(message)
        if self.source != (pick.cluster, pick.model):
            # Token ids of another model mean nothing here; start counting afresh.
            self.source = (pick.cluster, pick.model)
            self.token_ids = []
        self.text.append(parsed.text)
        self.token_ids.extend(token.id for token in parsed.tokens)
        self.finished = self.finished or bool(parsed.finish_reason)
        changed = False
        if parsed.tokens and not self.client_wants_token_ids:
            parsed.ClearField("tokens")
            changed = True
        if parsed.finish_reason and self.resumes:
            parsed.resumes = self.resumes
            changed = True
        return parsed.SerializeToString() if changed else message


@dataclass
class _Call:
    """One request's routing state across its attempts."""

    record: RequestRecord
    context: Context
    table: RouteTable
    route: Route
    model: str
    deadline: float | None
    metadata: Metadata
    limiter: KeyLimiter | None = None  # a key with a token limit: charged with the usage
    tried: set[Endpoint] = field(default_factory=set)

    def charge(self, response: bytes, usage_field: int) -> None:
        if self.limiter is not None:
            self.limiter.charge(wire.read_usage_tokens(response, usage_field))


class Proxy:
    """Forwards LLMService calls, with retries, failover and resume."""

    def __init__(self, table: RouteTable, retry: RetryConfig) -> None:
        self.table = table
        self.retry = retry
        self.budget = RetryBudget(retry.budget_max_tokens, retry.budget_token_ratio)
        self.guard: Guard | None = None
        self.max_request_bytes: int | None = None
        self.active = 0  # LLMService calls in progress, which a drain waits for

    def configure(
        self,
        table: RouteTable,
        retry: RetryConfig,
        guard: Guard | None = None,
        limits: RouterLimitsConfig | None = None,
    ) -> None:
        """Takes a reloaded config; requests in flight finish with what they started with."""
        self.table = table
        self.retry = retry
        self.budget.configure(retry.budget_max_tokens, retry.budget_token_ratio)
        self.guard = guard
        self.max_request_bytes = limits.max_request_bytes if limits else None

    async def _begin(self, record: RequestRecord, request: bytes, context: Context) -> _Call:
        """Finds the request's route, or aborts: UNAUTHENTICATED, PERMISSION_DENIED,
        RESOURCE_EXHAUSTED (a key's rate limit), INVALID_ARGUMENT or NOT_FOUND."""
        table = self.table  # a reload mid-request does not change this request's route
        guard = self.guard
        limiter: KeyLimiter | None = None
        try:
            principal = None if guard is None else guard.authenticate(context.invocation_metadata())
            if self.max_request_bytes is not None and len(request) > self.max_request_bytes:
                raise invalid_argument(
                    FieldViolation(
                        "request",
                        f"is {len(request)} bytes; at most {self.max_request_bytes}",
                    )
                )
            try:
                model = wire.read_model(request)
            except wire.MalformedRequestError as error:
                reason = f"unreadable request: {error}"
                raise invalid_argument(FieldViolation("request", reason)) from None
            if principal is None:
                route = table.route(model)
            else:
                record.key = principal.id
                route = Guard.route(principal, table, model)
                record.model = route.model  # a rate-limited request is counted by its route
                limiter = principal.limiter
                if limiter is not None:
                    limiter.admit()  # last: a refused request does not use the quota
        except StatusError as error:
            await _abort(record, context, error)
        record.model = route.model
        if tracing.enabled():
            record.span = _start_request_span(record, context, model)
        if guard is None:
            metadata = _forwarded(context.invocation_metadata())
        else:
            metadata = _forwarded(context.invocation_metadata(), _HOP_HEADERS_WITH_AUTH)
        # Only a key with a token limit needs its answers' usage read.
        charged = limiter if limiter is not None and limiter.tokens is not None else None
        return _Call(record, context, table, route, model, _deadline(context), metadata, charged)

    async def _next_pick(self, call: _Call, failure: _Failure | None) -> Pick:
        """The endpoint for the next attempt, or the final status when none is left."""
        pick = call.table.pick(call.route, call.tried)
        if pick is None:
            if failure is not None:  # every endpoint tried: the last answer stands
                error = StatusError(failure.code, failure.details)
                await _abort(call.record, call.context, error, failure.trailers)
            error = StatusError(
                grpc.StatusCode.UNAVAILABLE,
                describe_unavailable(call.route),
                reason="NO_HEALTHY_ENDPOINT",
                metadata={"model": call.route.model},
                retry_after=1.0,
            )
            await _abort(call.record, call.context, error)
        call.tried.add(pick.endpoint)
        call.record.attempts += 1
        return pick

    def _attempt_timeout(self, deadline: float | None) -> tuple[float | None, bool]:
        """(timeout for this attempt, whether it is the attempt's own per-try limit)."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        per_try = self.retry.per_try_timeout_seconds
        if per_try is not None and (remaining is None or per_try < remaining):
            return per_try, True
        return remaining, False

    def _may_retry(self, attempt: int, deadline: float | None) -> bool:
        if attempt >= self.retry.num_retries or not self.budget.allows_retry():
            return False
        return deadline is None or time.monotonic() < deadline

    async def _pause(self, attempt: int, deadline: float | None) -> None:
        pause = random.uniform(0, 0.025 * 2**attempt)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.monotonic()))
        await asyncio.sleep(pause)

    async def generate(self, request: bytes, context: Context) -> bytes:
        """Generate, relayed, retried on another endpoint when that can help."""
        return await self._unary(RequestRecord("Generate"), request, context)

    async def count_tokens(self, request: bytes, context: Context) -> bytes:
        """CountTokens, relayed exactly like Generate (its request has the model in
        field 1 too): same routing, retries and failover."""
        return await self._unary(RequestRecord("CountTokens"), request, context)

    async def _unary(self, record: RequestRecord, request: bytes, context: Context) -> bytes:
        """A unary call, relayed, retried on another endpoint when that can help."""
        counts_tokens = record.method == "CountTokens"
        self.active += 1
        try:
            call = await self._begin(record, request, context)
            route, model, deadline = call.route, call.model, call.deadline
            failure: _Failure | None = None
            attempt = 0
            while True:
                pick = await self._next_pick(call, failure)
                payload = request if pick.model == model else wire.with_model(request, pick.model)
                timeout, own_limit = self._attempt_timeout(deadline)
                span, attempt_metadata = _start_attempt(record, pick, attempt, call.metadata)
                outcome = "CANCELLED"
                pick.endpoint.outstanding += 1
                try:
                    upstream = (
                        pick.endpoint.count_tokens if counts_tokens else pick.endpoint.generate
                    )
                    response: bytes = await upstream(
                        payload, timeout=timeout, metadata=attempt_metadata
                    )
                    pick.endpoint.record_success()
                    self.budget.record_success()
                    outcome = "OK"
                    if call.limiter is not None and not counts_tokens:
                        call.charge(response, wire.GENERATE_USAGE_FIELD)
                    return response
                except grpc.aio.AioRpcError as error:
                    failure = self._classify(error, pick, own_limit)
                    outcome = failure.code.name
                except asyncio.CancelledError:
                    if _own_cancellation():
                        raise  # the client left: nothing more to do
                    failure = self._channel_closed(pick)  # the endpoint was removed under us
                    outcome = failure.code.name
                finally:
                    pick.endpoint.outstanding -= 1
                    _end_attempt(span, outcome)
                if failure.code not in RETRYABLE or not self._may_retry(attempt, deadline):
                    await _abort(
                        record,
                        context,
                        StatusError(failure.code, failure.details),
                        failure.trailers,
                    )
                attempt += 1
                RETRIES.labels(route.model).inc()
                await self._pause(attempt, deadline)
        except asyncio.CancelledError:
            record.code = _left_code(context)
            raise
        finally:
            self.active -= 1
            record.finish()

    def _classify(self, error: grpc.aio.AioRpcError, pick: Pick, own_limit: bool) -> _Failure:
        code = error.code()
        details = error.details() or ""
        trailers = _upstream_trailers(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and own_limit:
            pick.endpoint.record_failure("per-try timeout")
            self.budget.record_failure()
            return _Failure(
                grpc.StatusCode.UNAVAILABLE,
                f"model server {pick.endpoint.address} (cluster {pick.cluster}) did not answer "
                f"within the per-try timeout of {self.retry.per_try_timeout_seconds}s",
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            # Counts toward ejection whether the connection failed or the model
            # server said so itself (overload is RESOURCE_EXHAUSTED, and does not).
            pick.endpoint.record_failure(details or "unavailable")
            if not any(key == DETAILS_METADATA_KEY for key, _ in trailers):
                # A connection failure, not the model server's own answer: say where.
                details = (
                    f"model server {pick.endpoint.address} (cluster {pick.cluster}) for model "
                    f"{pick.model} is unavailable: {details}"
                )
        log.info("attempt on %s: %s: %s", pick.endpoint.address, code.name, details)
        if code in RETRYABLE:
            self.budget.record_failure()
        return _Failure(code, details, trailers)

    async def stream_generate(self, request: bytes, context: Context) -> AsyncIterator[bytes]:
        """StreamGenerate, relayed; retried until its first message, then maybe resumed."""
        record = RequestRecord("StreamGenerate")
        self.active += 1
        try:
            call = await self._begin(record, request, context)
            route, model, deadline = call.route, call.model, call.deadline
            resumable: _Resumable | None = None
            base = request
            if route.resume:
                try:
                    wants_ids = pb.StreamGenerateRequest.FromString(request).include_token_ids
                except DecodeError as error:
                    await _abort(
                        record,
                        context,
                        invalid_argument(
                            FieldViolation("request", f"not a valid request: {error}")
                        ),
                    )
                resumable = _Resumable(client_wants_token_ids=wants_ids)
                base = request + _WANT_TOKEN_IDS
            failure: _Failure | None = None
            attempt = 0
            delivered = 0
            while True:
                pick = await self._next_pick(call, failure)
                payload = base if pick.model == model else wire.with_model(base, pick.model)
                resuming = resumable is not None and delivered > 0
                if resumable is not None and resuming:
                    payload += resumable.continuation(pick)
                timeout, own_limit = self._attempt_timeout(deadline)
                # A resumed attempt first replays what was delivered (one forward pass
                # per token): the per-try timeout would punish a healthy server for it.
                first_timeout = timeout if own_limit and not resuming else None
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                span, attempt_metadata = _start_attempt(record, pick, attempt, call.metadata)
                outcome = "CANCELLED"
                pick.endpoint.outstanding += 1
                upstream = pick.endpoint.stream_generate(
                    payload, timeout=remaining, metadata=attempt_metadata
                )
                received = 0
                try:
                    responses = upstream.__aiter__()
                    # The per-try timeout bounds the wait for an attempt's first message.
                    first = await asyncio.wait_for(anext(responses), first_timeout)
                    received = 1
                    yield first if resumable is None else resumable.relay(first, pick)
                    delivered += 1
                    if call.limiter is None:
                        async for message in responses:
                            received += 1
                            yield message if resumable is None else resumable.relay(message, pick)
                            delivered += 1
                    else:
                        last = first
                        async for message in responses:
                            received += 1
                            last = message
                            yield message if resumable is None else resumable.relay(message, pick)
                            delivered += 1
                        call.charge(last, wire.STREAM_USAGE_FIELD)  # usage is in the last one
                    pick.endpoint.record_success()
                    self.budget.record_success()
                    outcome = "OK"
                    return
                except StopAsyncIteration:
                    outcome = "OK"
                    return  # an empty stream: nothing to relay
                except TimeoutError:
                    failure = self._classify_timeout(pick)
                    outcome = failure.code.name
                except grpc.aio.AioRpcError as error:
                    failure = self._classify(error, pick, own_limit=False)
                    outcome = failure.code.name
                except asyncio.CancelledError:
                    if _own_cancellation():
                        raise  # the client left: nothing more to do
                    failure = self._channel_closed(pick)  # the endpoint was removed under us
                    outcome = failure.code.name
                finally:
                    pick.endpoint.outstanding -= 1
                    upstream.cancel()  # client gone, attempt failed or done: stop its work
                    _end_attempt(span, outcome, received)
                if resumable is not None and resumable.finished:
                    return  # the final message was relayed; only the trailers were lost
                if received == 0 and (
                    failure.code not in RETRYABLE or not self._may_retry(attempt, deadline)
                ):
                    await _abort(
                        record,
                        context,
                        StatusError(failure.code, failure.details),
                        failure.trailers,
                    )
                elif received == 0:
                    pass  # nothing of this attempt reached the client: retry it elsewhere
                elif resumable is not None and failure.code in RETRYABLE:
                    if not self._may_retry(attempt, deadline):
                        await _abort(record, context, StatusError(failure.code, failure.details))
                    resumable.resumes += 1
                    RESUMES.labels(route.model).inc()
                    log.warning(
                        "resuming %s after %d messages: %s", route.model, delivered, failure.details
                    )
                elif resumable is not None:
                    await _abort(
                        record,
                        context,
                        StatusError(
                            failure.code, f"{failure.details} (after {delivered} streamed messages)"
                        ),
                        failure.trailers,
                    )
                else:
                    await _abort(
                        record,
                        context,
                        StatusError(
                            failure.code,
                            f"{failure.details} (after {delivered} streamed messages; "
                            f"route {route.model!r} does not resume)",
                        ),
                        failure.trailers,
                    )
                attempt += 1
                RETRIES.labels(route.model).inc()
                await self._pause(attempt, deadline)
        except (asyncio.CancelledError, GeneratorExit):
            # grpc closes the generator (GeneratorExit) or cancels the task when
            # the caller leaves or its deadline passes.
            record.code = _left_code(context)
            raise
        finally:
            self.active -= 1
            record.finish()

    def _channel_closed(self, pick: Pick) -> _Failure:
        self.budget.record_failure()
        return _Failure(
            grpc.StatusCode.UNAVAILABLE,
            f"model server {pick.endpoint.address} (cluster {pick.cluster}) was removed "
            "from the configuration while the request ran",
        )

    def _classify_timeout(self, pick: Pick) -> _Failure:
        pick.endpoint.record_failure("per-try timeout")
        self.budget.record_failure()
        return _Failure(
            grpc.StatusCode.UNAVAILABLE,
            f"model server {pick.endpoint.address} (cluster {pick.cluster}) sent nothing "
            f"within the per-try timeout of {self.retry.per_try_timeout_seconds}s",
        )


def _start_request_span(record: RequestRecord, context: Context, model: str) -> Any:
    """The request's SERVER span, made current for the rest of the handler so that
    its log lines carry the trace (each RPC runs in its own task and context)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    span = _tracer().start_span(
        f"{record.method} {model}",
        context=tracing.extract(context.invocation_metadata()),
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": "switchyard.v1.LLMService",
            "rpc.method": record.method,
            "gen_ai.request.model": model,
        },
    )
    otel_context.attach(trace.set_span_in_context(span))
    return span


def _start_attempt(
    record: RequestRecord, pick: Pick, attempt: int, metadata: Metadata
) -> tuple[Any, Metadata]:
    """A child span for one attempt, and metadata carrying it to the model server."""
    if record.span is None:
        return None, metadata
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    span = _tracer().start_span(
        f"attempt {attempt + 1} {pick.endpoint.address}",
        context=trace.set_span_in_context(record.span),
        kind=SpanKind.CLIENT,
        attributes={
            "switchyard.attempt": attempt + 1,
            "switchyard.cluster": pick.cluster,
            "server.address": pick.endpoint.address,
            "gen_ai.request.model": pick.model,
        },
    )
    return span, tracing.inject(metadata, span)


def _end_attempt(span: Any, outcome: str, received: int | None = None) -> None:
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("switchyard.outcome", outcome)
    if received is not None:
        span.set_attribute("switchyard.messages_relayed", received)
    if outcome != "OK":
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()


def _left_code(context: Context) -> str:
    """How a request that ended early is counted: its deadline passed, or the caller left."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _own_cancellation() -> bool:
    """Whether the running task itself is being cancelled (the caller left),
    as opposed to a CancelledError raised by a call whose channel was closed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def _abort(
    record: RequestRecord, context: Context, error: StatusError, trailers: Metadata | None = None
) -> NoReturn:
    """Counts the request as ``error`` and ends it (with the upstream's trailers
    when relaying an upstream status)."""
    record.code = error.code.name
    await status.abort(context, error, trailers)
