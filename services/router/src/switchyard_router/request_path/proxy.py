"""The router's request path: admission, then one attempt loop for Generate and
StreamGenerate alike, relaying raw bytes.

Requests are never parsed: the router reads the model name and LoRA adapter
from the wire (``wire.read_model_and_adapter``) and relays request and response
bytes untouched, which is what keeps a Python hop cheap (see docs/architecture.md,
performance facts). Deadlines propagate as each attempt's timeout; a caller that
leaves cancels the upstream call, which stops generation on the model server.

Each attempt asks the route's picker for an endpoint, runs there (one response,
or a stream of them) and ends in one of four outcomes: success; a failure
another endpoint can fix before anything reached the caller (``retry``: tried
elsewhere, within the deadline and the retry budget); a stream that failed
after sending messages, which a ``resume`` route continues elsewhere from the
text and token ids already sent (the only path that parses responses); or the
request's final error. Fronts (``front``) supply the request and a sink for its
response messages, and turn a raised ``StatusError`` into their own error.

With ``auth`` configured, admission checks each call against the API keys
(``auth``) and asks the fleet state (``fleet``) for the key's rate limits and token
budget; a route with a ``cache`` is looked up there too, and a hit is answered
from it without an attempt (marked ``x-switchyard-cache: hit``). Model tokens
are charged from the usage in the answer, read from its bytes
(``wire.read_usage_tokens``), or for a stream cut off early from the tokens it
relayed (``metering``), which also ends a stream whose budget runs out; a miss's
answer is recorded and stored. Without keys with limits or cached routes, none
of that code runs.

Each attempt's end also brings the model server's load report (ORCA, in the
trailing metadata: ``load_reports``), kept on its endpoint for the picker and
never relayed to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from switchyard.status import parse_details, refused_stream
from switchyard_common import tracing
from switchyard_common.status import DETAILS_METADATA_KEY, StatusError, call_ended
from switchyard_router.admission.admission import Admission, Call
from switchyard_router.admission.auth import Guard
from switchyard_router.admission.overload import InFlight
from switchyard_router.config import RetryConfig, RouterLimitsConfig
from switchyard_router.fleet import FleetState
from switchyard_router.fleet.config import ResponseCacheConfig
from switchyard_router.fronts.front import Inbound, Metadata, ResponseSink, UpstreamStatusError
from switchyard_router.metrics import (
    HEALTHY_PANIC,
    REFUSED_STREAMS,
    RESUMES,
    RETRIES,
    RequestRecord,
)
from switchyard_router.request_path import wire
from switchyard_router.request_path.retry import RETRYABLE, RetryBudget
from switchyard_router.request_path.routing import EndpointPick, RouteTable, describe_unavailable
from switchyard_router.request_path.spans import (
    end_attempt_span,
    start_attempt_span,
    start_request_span,
)
from switchyard_router.upstream import load_reports
from switchyard_router.upstream.connection_pool import Connection

log = logging.getLogger("switchyard.router.proxy")

CACHE_HEADER = "x-switchyard-cache"
_CACHE_HIT: Metadata = ((CACHE_HEADER, "hit"),)
# A refused stream is sent again at once this many times at most per request.
_MAX_REFUSALS = 16
MODEL_SCOPED_REASONS = frozenset({"MODEL_LOADING", "MODEL_UNAVAILABLE", "MODEL_REMOVED"})
"""A model server's UNAVAILABLE reasons that concern one model, not the server: retried
elsewhere, but no mark against the endpoint for outlier detection."""


@dataclass
class _Failure:
    """A failed attempt, for the final status if no retry succeeds."""

    code: grpc.StatusCode
    details: str
    trailers: Metadata = ()
    refused: bool = False
    """HTTP/2 refused the stream (REFUSED_STREAM): the model server never processed it."""

    def relayed(self, details: str | None = None) -> UpstreamStatusError:
        """The failure as the request's final status, with the model server's trailers."""
        message = self.details if details is None else details
        return UpstreamStatusError(self.code, message, self.trailers)


class Proxy:
    """The request path every front shares: admission, picks, retries, resume."""

    def __init__(self, table: RouteTable, retry: RetryConfig) -> None:
        self.in_flight = InFlight()
        self.admission = Admission(table, in_flight=self.in_flight)
        self.retry = retry
        self.budget = RetryBudget(retry.budget_max_tokens, retry.budget_token_ratio)
        self.active = 0  # calls in progress, which a drain waits for

    @property
    def table(self) -> RouteTable:
        """The current routes."""
        return self.admission.table

    @property
    def guard(self) -> Guard | None:
        """The current API keys (None: auth is off)."""
        return self.admission.guard

    @property
    def fleet(self) -> FleetState:
        """Where limits, budgets and cached answers are kept."""
        return self.admission.fleet

    def configure(
        self,
        table: RouteTable,
        retry: RetryConfig,
        guard: Guard | None = None,
        limits: RouterLimitsConfig | None = None,
        fleet: FleetState | None = None,
        cache: ResponseCacheConfig | None = None,
    ) -> None:
        """Takes a reloaded config; requests in flight finish with what they started with."""
        max_request_bytes = limits.max_request_bytes if limits else None
        self.in_flight.max_total = limits.max_in_flight if limits else None
        self.admission = Admission(
            table,
            guard,
            max_request_bytes,
            fleet or self.admission.fleet,
            cache or self.admission.cache,
            self.in_flight,
        )
        self.retry = retry
        self.budget.configure(retry.budget_max_tokens, retry.budget_token_ratio)

    async def handle(self, inbound: Inbound, sink: ResponseSink) -> None:
        """Serves one Generate or StreamGenerate call that a front received: response
        messages go to ``sink``; a failure is raised as ``StatusError`` (see ``front``)."""
        record = RequestRecord(inbound.method)
        self.active += 1
        call: Call | None = None
        try:
            call = await self.admission.admit(inbound, record)
            if tracing.enabled():
                record.span = start_request_span(record, inbound, call.route.model)
            if call.cached is not None:
                await _replay(call.cached, sink)
            else:
                await self._attempts(call, sink)
        except StatusError as error:
            record.code = error.code.name
            raise
        except asyncio.CancelledError:
            record.code = _left_code(inbound)
            raise
        except Exception as error:
            if call_ended(error):  # a write to a caller that had just left
                record.code = _left_code(inbound)
            raise
        finally:
            self.active -= 1
            if call is not None:
                call.release()
                if call.fleet is not None:
                    _settle(call, record.code == "OK")
            record.finish()

    async def _attempts(self, call: Call, sink: ResponseSink) -> None:
        """Attempts until one answers, or raises the request's final status."""
        failure: _Failure | None = None
        attempt = 0
        refusals = 0
        while True:
            pick = self._next_pick(call, failure)
            delivered = call.delivered
            failure = await self._attempt(call, pick, attempt, sink)
            if failure is None:
                return
            if call.resume is not None and call.resume.finished:
                return  # the final message was relayed; only the trailers were lost
            if failure.refused and refusals < _MAX_REFUSALS and _before(call.deadline):
                # Never processed (HTTP/2 says so): again at once, not a retry. The pool
                # learned that connection's limit, so it goes on another connection of
                # the same endpoint, or to another endpoint.
                refusals += 1
                call.tried.discard(pick.endpoint)
                REFUSED_STREAMS.labels(pick.cluster).inc()
                continue
            self._raise_if_final(call, failure, call.delivered - delivered, attempt)
            attempt += 1
            RETRIES.labels(call.route.model).inc()
            await self._pause(attempt, call.deadline)

    def _next_pick(self, call: Call, failure: _Failure | None) -> EndpointPick:
        """The endpoint for the next attempt, or the final status when none is left."""
        pick = call.route.picker.pick(call.view, call.tried)
        if pick is None:
            if failure is not None:  # every endpoint tried: the last answer stands
                raise failure.relayed()
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                describe_unavailable(call.route),
                reason="NO_HEALTHY_ENDPOINT",
                metadata={"model": call.route.model},
                retry_after=1.0,
            )
        call.tried.add(pick.endpoint)
        call.record.attempts += 1
        if pick.panic:
            HEALTHY_PANIC.labels(call.route.model).inc()
        return pick

    async def _attempt(
        self, call: Call, pick: EndpointPick, attempt: int, sink: ResponseSink
    ) -> _Failure | None:
        """One attempt on ``pick``: None once the request is answered, else its failure."""
        streaming = call.inbound.streaming
        timeout, own_limit = self._attempt_timeout(call.deadline)
        span, metadata = start_attempt_span(call.record, pick, attempt, call.metadata)
        delivered = call.delivered
        outcome = "CANCELLED"
        endpoint = pick.endpoint
        connection = endpoint.pool.acquire()
        endpoint.outstanding += 1
        try:
            if streaming:
                # The per-try timeout bounds the wait for an attempt's first message.
                first_timeout = timeout if own_limit else None
                await self._stream(call, pick, connection, first_timeout, metadata, sink)
            else:
                await self._unary(call, pick, connection, timeout, metadata, sink)
            outcome = "OK"
            return None
        except TimeoutError:
            failure = self._classify_timeout(pick)
            outcome = failure.code.name
        except grpc.aio.AioRpcError as error:
            # A stream's gRPC timeout is the caller's deadline, never its own limit.
            failure = self._classify(error, pick, connection, own_limit and not streaming)
            outcome = "REFUSED_STREAM" if failure.refused else failure.code.name
        except asyncio.CancelledError:
            if _own_cancellation():
                raise  # the client left: nothing more to do
            failure = self._channel_closed(pick)  # the endpoint was removed under us
            outcome = failure.code.name
        finally:
            endpoint.outstanding -= 1
            endpoint.pool.release(connection)
            end_attempt_span(span, outcome, call.delivered - delivered if streaming else None)
        return failure

    async def _unary(
        self,
        call: Call,
        pick: EndpointPick,
        connection: Connection,
        timeout: float | None,
        metadata: Metadata,
        sink: ResponseSink,
    ) -> None:
        counts_tokens = call.inbound.counts_tokens
        method = connection.count_tokens if counts_tokens else connection.generate
        upstream = method(_payload(call, pick), timeout=timeout, metadata=metadata)
        response: bytes = await upstream
        pick.endpoint.take_report(await upstream.trailing_metadata())
        self._succeeded(pick, call.view.adapter)
        if not counts_tokens:  # a count is not a generation: no usage, nothing to cache
            call.note_usage(response, wire.GENERATE_USAGE_FIELD)
            if call.recorder is not None:
                call.recorder.add(response)
        await sink.send(response)

    async def _stream(
        self,
        call: Call,
        pick: EndpointPick,
        connection: Connection,
        first_timeout: float | None,
        metadata: Metadata,
        sink: ResponseSink,
    ) -> None:
        resume = call.resume
        payload = _payload(call, pick)
        if resume is not None and call.delivered:
            payload += resume.continuation(pick)
            # A resumed attempt first replays what was delivered (one forward pass
            # per token): the per-try timeout would punish a healthy server for it.
            first_timeout = None
        remaining = None if call.deadline is None else max(0.0, call.deadline - time.monotonic())
        upstream = connection.stream_generate(payload, timeout=remaining, metadata=metadata)
        try:
            responses = upstream.__aiter__()
            try:
                first = await asyncio.wait_for(anext(responses), first_timeout)
            except StopAsyncIteration:
                return  # an empty stream: nothing to relay
            send = sink.send
            if call.relays_plainly:  # the hot path: bytes in, bytes out
                await send(first)
                call.delivered += 1
                async for message in responses:
                    await send(message)
                    call.delivered += 1
            else:
                last = first
                await _relay(call, first, pick, send)
                async for message in responses:
                    last = message
                    await _relay(call, message, pick, send)
                call.note_usage(last, wire.STREAM_USAGE_FIELD)  # usage is in the last one
            pick.endpoint.take_report(await upstream.trailing_metadata())
            self._succeeded(pick, call.view.adapter)
        finally:
            upstream.cancel()  # client gone, attempt failed or done: stop its work

    def _raise_if_final(self, call: Call, failure: _Failure, received: int, attempt: int) -> None:
        """Raises the request's final status unless another attempt may follow: a retry
        when nothing of this one reached the caller, else a resume."""
        if received == 0:  # nothing of this attempt reached the client: retry it elsewhere
            if failure.code not in RETRYABLE or not self._may_retry(attempt, call.deadline):
                raise failure.relayed()
            return
        resume = call.resume
        if resume is not None and failure.code in RETRYABLE and not resume.calls_tools:
            if not self._may_retry(attempt, call.deadline):
                raise StatusError(failure.code, failure.details)
            resume.resumes += 1
            RESUMES.labels(call.route.model).inc()
            log.warning(
                "resuming %s after %d messages: %s",
                call.route.model,
                call.delivered,
                failure.details,
            )
            return
        if resume is not None:
            raise failure.relayed(f"{failure.details} (after {call.delivered} streamed messages)")
        raise failure.relayed(
            f"{failure.details} (after {call.delivered} streamed messages; "
            f"route {call.route.model!r} does not resume)"
        )

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

    def _succeeded(self, pick: EndpointPick, adapter: str | None = None) -> None:
        pick.endpoint.record_success()
        self.budget.record_success()
        if adapter is not None:  # it has the adapter loaded now: prefer it for the next
            pick.endpoint.hold_adapter(pick.model, adapter)

    def _classify(
        self,
        error: grpc.aio.AioRpcError,
        pick: EndpointPick,
        connection: Connection,
        own_limit: bool,
    ) -> _Failure:
        code = error.code()
        details = error.details() or ""
        if refused_stream(code.name, details):
            # Not the endpoint's failure: the connection had more calls than the model
            # server takes at once. Neither ejection nor the retry budget hears of it.
            pick.endpoint.pool.refused(connection)
            return _Failure(code, details, refused=True)
        pick.endpoint.take_report(error.trailing_metadata())
        trailers = _upstream_trailers(error)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and own_limit:
            return self._classify_timeout(pick)
        if code == grpc.StatusCode.CANCELLED:
            # Not the caller's doing (that cancels this task instead): the model server
            # cancelled the call, as one that stops does. Another endpoint can serve it.
            code = grpc.StatusCode.UNAVAILABLE
            details = f"the model server cancelled the call ({details or 'no details'})"
        gone = False
        if code == grpc.StatusCode.UNAVAILABLE:
            # Counts toward ejection whether the connection failed or the model
            # server said so itself (overload is RESOURCE_EXHAUSTED, and does not),
            # unless the model server said it of one model only: it serves its
            # other models, and its health stream takes that one out by itself.
            answered = any(key == DETAILS_METADATA_KEY for key, _ in trailers)
            if not (answered and _model_scoped(trailers)):
                pick.endpoint.record_failure(details or "unavailable")
            if not answered:
                # A connection failure, not the model server's own answer: say where.
                gone = True
                details = (
                    f"model server {pick.endpoint.address} (cluster {pick.cluster}) for model "
                    f"{pick.model} is unavailable: {details}"
                )
        log.info("attempt on %s: %s: %s", pick.endpoint.address, code.name, details)
        if code in RETRYABLE and not gone:
            # The retry budget guards against a fleet that answers errors under load.
            # A model server that went away (its connection broke: killed, restarting)
            # takes none: every call it had in flight, hundreds at once on a busy
            # replica, goes once to another endpoint, which multiplies no load.
            self.budget.record_failure()
        return _Failure(code, details, trailers)

    def _channel_closed(self, pick: EndpointPick) -> _Failure:
        # The router's own doing (the endpoint left its config): no mark on the budget.
        return _Failure(
            grpc.StatusCode.UNAVAILABLE,
            f"model server {pick.endpoint.address} (cluster {pick.cluster}) was removed "
            "from the configuration while the request ran",
        )

    def _classify_timeout(self, pick: EndpointPick) -> _Failure:
        """The per-try timeout ran out (a unary answer, or a stream's first message):
        the endpoint's failure, and one the retry budget counts."""
        pick.endpoint.record_failure("per-try timeout")
        self.budget.record_failure()
        return _Failure(
            grpc.StatusCode.UNAVAILABLE,
            f"model server {pick.endpoint.address} (cluster {pick.cluster}) did not answer "
            f"within the per-try timeout of {self.retry.per_try_timeout_seconds}s",
        )


def _payload(call: Call, pick: EndpointPick) -> bytes:
    """The request as ``pick``'s target names the model."""
    if pick.model == call.route.model:
        return call.payload
    return wire.with_model(call.payload, pick.model)


async def _relay(
    call: Call, message: bytes, pick: EndpointPick, send: Callable[[bytes], Awaitable[None]]
) -> None:
    """Relays one stream message that the router reads: metered (and cut when the
    budget runs out), recorded for resume and the cache."""
    out = message
    if call.meter is not None:
        out = await call.meter.pass_message(message)
    if call.resume is not None:
        out = call.resume.relay(message, pick)
    if call.recorder is not None:
        call.recorder.add(out)
    await send(out)
    call.delivered += 1


async def _replay(messages: list[bytes], sink: ResponseSink) -> None:
    """Answers from the cache: the stored messages, marked as a hit."""
    await sink.send_headers(_CACHE_HIT)
    for message in messages:
        await sink.send(message)


def _settle(call: Call, answered: bool) -> None:
    """Charges the request's usage and stores a cacheable answer, when it ends."""
    fleet = call.fleet
    assert fleet is not None
    ticket = call.ticket
    if ticket is not None and ticket.charged:
        fleet.settle(ticket, call.tokens_used())
    recorder = call.recorder
    if recorder is not None and answered:
        entry = recorder.entry()
        if entry is not None:
            fleet.store(recorder.key, entry, recorder.ttl_seconds, recorder.model)


def _model_scoped(trailers: Metadata) -> bool:
    """Whether a model server's UNAVAILABLE is about one of its models (loading for
    longer than its ``load_wait_seconds``, failed to load, its file removed) rather
    than about the server."""
    return parse_details(trailers).reason in MODEL_SCOPED_REASONS


def _upstream_trailers(error: grpc.aio.AioRpcError) -> Metadata:
    """A failed attempt's trailers to relay: the model server's own (its status
    details included), not gRPC's nor its load report, which is for the router."""
    trailers: Iterable[Any] = error.trailing_metadata() or ()
    return tuple(
        (key, value)
        for key, value in trailers
        if key == DETAILS_METADATA_KEY
        or not (key.startswith((":", "grpc-")) or key in load_reports.TRAILERS)
    )


def _left_code(inbound: Inbound) -> str:
    """How a request that ended early is counted: its deadline passed, or the caller left."""
    remaining = inbound.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"


def _before(deadline: float | None) -> bool:
    return deadline is None or time.monotonic() < deadline


def _own_cancellation() -> bool:
    """Whether the running task itself is being cancelled (the caller left),
    as opposed to a CancelledError raised by a call whose channel was closed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
