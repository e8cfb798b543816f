"""Admission: the checks a request passes before its first attempt, whichever front
it came in by, and the :class:`Call` it becomes.

In order: the API key (``auth``), the request's size, its model name and route, the
router's and the route's calls in progress (``overload``: this router's own
counts), then one question to the fleet state (``fleet``) for what needs shared
counters: the key's rate limits, its token budget reservation and the route's
cached answer (at most one round trip to Redis, and none at all for a request
whose key has no limits on a route without a cache; last, so that a refused
request uses no quota). Each refusal is a ``StatusError``: UNAUTHENTICATED,
PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED with
RetryInfo: one place that decides whether a request gets an endpoint at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_router import metrics
from switchyard_router.admission.auth import AUTHORIZATION, Guard, Principal
from switchyard_router.admission.metering import TokenMeter
from switchyard_router.admission.overload import InFlight
from switchyard_router.fleet import Ask, FleetState, KeyLimits, Ticket
from switchyard_router.fleet.cache import (
    CacheRecorder,
    cache_directives,
    cache_key,
    decode_entry,
)
from switchyard_router.fleet.config import ResponseCacheConfig
from switchyard_router.fleet.local import LocalFleetState
from switchyard_router.fronts.front import Inbound, Metadata
from switchyard_router.load_balancing import capabilities
from switchyard_router.load_balancing.picker import RequestView
from switchyard_router.metrics import RequestRecord
from switchyard_router.request_path import wire
from switchyard_router.request_path.resume import WANT_TOKEN_IDS, ResumeState
from switchyard_router.request_path.routing import Route, RouteTable
from switchyard_router.upstream.endpoints import Endpoint

# Headers that belong to the hop, not the request; everything else (trace
# context, caller credentials, custom metadata) travels on to the model server.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host", "grpc-accept-encoding"})
# With auth on, the caller's API key is the router's, not the model server's.
_HOP_HEADERS_WITH_AUTH = _HOP_HEADERS | {AUTHORIZATION}


def forwarded(metadata: Iterable[Any] | None, hop: frozenset[str] = _HOP_HEADERS) -> Metadata:
    """The caller's metadata that travels on to the model server."""
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if key not in hop and not key.startswith((":", "grpc-"))
    )


@dataclass(slots=True)
class Call:
    """One admitted request's state across its attempts."""

    inbound: Inbound
    record: RequestRecord
    route: Route
    view: RequestView
    """What the route's picker knows of the request."""
    payload: bytes
    """What each attempt sends (before a target's own model name is written in): the
    request, asking for token ids on a resume route or a metered stream."""
    metadata: Metadata
    """Forwarded to the model server."""
    deadline: float | None
    """``time.monotonic()`` by which the caller wants an answer."""
    fleet: FleetState | None = None
    """Where the ticket is settled and the answer stored (None: nothing to do)."""
    ticket: Ticket | None = None
    """What the fleet state granted: settled with the answer's usage when it ends."""
    meter: TokenMeter | None = None
    """A stream of a key with a token rate or budget: its tokens are counted as relayed."""
    cached: list[bytes] | None = None
    """The cached answer's messages: the request is answered from them."""
    recorder: CacheRecorder | None = None
    """A cache miss: the answer is recorded to be stored."""
    used: int | None = None
    """Prompt + completion tokens from the answer's usage, once it arrived."""
    resume: ResumeState | None = None
    """Set for a stream on a ``resume: true`` route."""
    tried: set[Endpoint] = field(default_factory=set)
    delivered: int = 0
    """Response messages sent to the caller so far, over every attempt."""
    in_flight: InFlight | None = None
    """Where the call is counted in progress, until :meth:`release`."""

    def release(self) -> None:
        """The call ended: it no longer counts toward ``max_in_flight``."""
        if self.in_flight is not None:
            self.in_flight.leave(self.route.model)
            self.in_flight = None

    @property
    def relays_plainly(self) -> bool:
        """Whether response bytes go through untouched and unread (the hot path)."""
        return (
            self.resume is None
            and self.meter is None
            and self.recorder is None
            and (self.ticket is None or not self.ticket.charged)
        )

    def note_usage(self, response: bytes, usage_field: int) -> None:
        """Reads the answer's usage, which settles the key's token rate and budget."""
        if self.ticket is not None and self.ticket.charged:
            self.used = wire.read_usage_tokens(response, usage_field)

    def tokens_used(self) -> int:
        """What the request is charged: its usage, or what a cut-off stream delivered."""
        if self.used:
            return self.used
        return self.meter.delivered if self.meter is not None else 0


@dataclass(frozen=True)
class Admission:
    """The admission checks with the config they use; a reload replaces it whole, so
    a request admitted before keeps the routes (and fleet state) it started with."""

    table: RouteTable
    guard: Guard | None = None
    max_request_bytes: int | None = None
    fleet: FleetState = field(default_factory=LocalFleetState)
    cache: ResponseCacheConfig = field(default_factory=ResponseCacheConfig)
    in_flight: InFlight | None = None
    """The router's count of calls in progress (it outlives reloads); None: no limits."""

    async def admit(self, inbound: Inbound, record: RequestRecord) -> Call:
        """The request's :class:`Call`, or a ``StatusError`` saying why not. Fills in
        ``record``'s key id and model as soon as they are known."""
        request = inbound.request
        guard = self.guard
        principal = None if guard is None else guard.authenticate(inbound.metadata)
        if self.max_request_bytes is not None and len(request) > self.max_request_bytes:
            raise invalid_argument(
                FieldViolation(
                    "request", f"is {len(request)} bytes; at most {self.max_request_bytes}"
                )
            )
        try:
            model, adapter = wire.read_model_and_adapter(request)
        except wire.MalformedRequestError as error:
            reason = f"unreadable request: {error}"
            raise invalid_argument(FieldViolation("request", reason)) from None
        if principal is None:
            route = self.table.route(model)
        else:
            record.key = principal.id
            route = Guard.route(principal, self.table, model)
        record.model = route.model  # a refused request is counted by its route
        if guard is None:
            metadata = forwarded(inbound.metadata)
        else:
            metadata = forwarded(inbound.metadata, _HOP_HEADERS_WITH_AUTH)
        remaining = inbound.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        key = None
        if route.affinity is not None:  # only prefix_affinity routes read more of a request
            key = route.affinity.key(request, inbound.metadata)
        needs = 0
        lacking = route.picker.lacking
        if lacking and not inbound.counts_tokens:  # targets differ in what they can do
            needs = capabilities.needs_of(request) & lacking
        view = RequestView(route.model, key, len(request), adapter or None, needs)
        call = Call(inbound, record, route, view, request, metadata, deadline)
        if self.in_flight is not None:
            self.in_flight.enter(route.model, route.max_in_flight)
            call.in_flight = self.in_flight
        try:
            limits = principal.limits if principal is not None else None
            if limits is not None or route.cache is not None:
                await self._ask_fleet(call, principal, limits)  # last: a refusal uses no quota
            if inbound.streaming and route.resume and call.cached is None:
                call.resume = ResumeState.for_request(request)
            if call.resume is not None or call.meter is not None:
                call.payload = request + WANT_TOKEN_IDS
        except BaseException:  # refused, or the caller left: it never ran
            call.release()
            raise
        return call

    async def _ask_fleet(
        self, call: Call, principal: Principal | None, limits: KeyLimits | None
    ) -> None:
        """Rate limits, budget and cache in one question to the fleet state."""
        inbound, route = call.inbound, call.route
        if inbound.counts_tokens:
            # A count generates nothing: the key's request rate applies, its token
            # budget and the response cache do not (a CountTokensRequest's bytes
            # can equal a GenerateRequest's, so it must never meet the cache).
            call.fleet = self.fleet
            call.ticket = await self.fleet.admit(Ask(limits, 0, False, None))
            return
        try:
            sampling = wire.read_sampling(inbound.request)
        except wire.MalformedRequestError as error:
            reason = f"unreadable request: {error}"
            raise invalid_argument(FieldViolation("request", reason)) from None
        key = self._cache_key(call, principal, sampling)
        reserve = 0
        if limits is not None and limits.budget is not None:
            wanted = sampling.max_tokens
            reserve = wanted if wanted and wanted > 0 else limits.budget.reserve_tokens
        ticket = await self.fleet.admit(Ask(limits, reserve, inbound.streaming, key))
        call.fleet, call.ticket = self.fleet, ticket
        if key is not None:
            cached = (
                None
                if ticket.cached is None
                else decode_entry(ticket.cached, call.inbound.streaming)
            )
            if cached is not None:
                call.cached = cached
                call.recorder = None
                call.record.cache = "hit"
            else:
                call.record.cache = "miss"
            metrics.CACHE_LOOKUPS.labels(route.model, call.record.cache).inc()
        if call.cached is None and inbound.streaming and limits is not None and limits.needs_usage:
            step = limits.budget.reserve_tokens if limits.budget is not None else 0
            strip = not sampling.wants_tokens and not route.resume
            call.meter = TokenMeter(self.fleet, ticket, route.model, strip, step)

    def _cache_key(
        self, call: Call, principal: Principal | None, sampling: wire.RequestSampling
    ) -> bytes | None:
        """The request's cache key (None: not looked up), and its recorder on a miss."""
        route = call.route
        config = route.cache
        if config is None:
            return None
        if not (sampling.deterministic or config.nondeterministic):
            metrics.CACHE_LOOKUPS.labels(route.model, "nondeterministic").inc()
            call.record.cache = "nondeterministic"
            return None
        directives = cache_directives(call.inbound.metadata)
        scope = principal.cache_scope if principal is not None and config.scope == "key" else ""
        key = cache_key(call.inbound.streaming, scope, route.identity, call.inbound.request)
        if "no-store" not in directives:
            call.recorder = CacheRecorder(
                key,
                config.ttl_seconds,
                route.model,
                call.inbound.streaming,
                self.cache.max_entry_bytes,
            )
        if "no-cache" in directives or "no-store" in directives:
            metrics.CACHE_LOOKUPS.labels(route.model, "bypass").inc()
            call.record.cache = "bypass"
            return None
        return key
