"""Admission: the checks a request passes before its first attempt, whichever front
it came in by, and the :class:`Call` it becomes.

In order: the API key (``auth``), the request's size, its model name and route, the
key's rate limit (last, so that a refused request does not use the quota). Each
refusal is a ``StatusError``: UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT,
NOT_FOUND or RESOURCE_EXHAUSTED with RetryInfo. Checks still to come (fleet-wide
limits, token budgets, a response cache, overload) belong here too: one place that
decides whether a request gets an endpoint at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_router import wire
from switchyard_router.auth import AUTHORIZATION, Guard
from switchyard_router.endpoints import Endpoint
from switchyard_router.front import Inbound, Metadata
from switchyard_router.metrics import RequestRecord
from switchyard_router.picker import RequestView
from switchyard_router.quota import KeyLimiter
from switchyard_router.resume import WANT_TOKEN_IDS, ResumeState
from switchyard_router.routing import Route, RouteTable

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
    request, asking for token ids on a resume route."""
    metadata: Metadata
    """Forwarded to the model server."""
    deadline: float | None
    """``time.monotonic()`` by which the caller wants an answer."""
    limiter: KeyLimiter | None = None
    """A key with a token limit: charged with the usage of the answer."""
    resume: ResumeState | None = None
    """Set for a stream on a ``resume: true`` route."""
    tried: set[Endpoint] = field(default_factory=set)
    delivered: int = 0
    """Response messages sent to the caller so far, over every attempt."""

    def charge(self, response: bytes, usage_field: int) -> None:
        """Charges the key's token limit with a response's usage."""
        if self.limiter is not None:
            self.limiter.charge(wire.read_usage_tokens(response, usage_field))


@dataclass(frozen=True)
class Admission:
    """The admission checks with the config they use; a reload replaces it whole, so
    a request admitted before keeps the routes it started with."""

    table: RouteTable
    guard: Guard | None = None
    max_request_bytes: int | None = None

    async def admit(self, inbound: Inbound, record: RequestRecord) -> Call:
        """The request's :class:`Call`, or a ``StatusError`` saying why not. Fills in
        ``record``'s key id and model as soon as they are known."""
        request = inbound.request
        guard = self.guard
        limiter: KeyLimiter | None = None
        principal = None if guard is None else guard.authenticate(inbound.metadata)
        if self.max_request_bytes is not None and len(request) > self.max_request_bytes:
            raise invalid_argument(
                FieldViolation(
                    "request", f"is {len(request)} bytes; at most {self.max_request_bytes}"
                )
            )
        try:
            model = wire.read_model(request)
        except wire.MalformedRequestError as error:
            reason = f"unreadable request: {error}"
            raise invalid_argument(FieldViolation("request", reason)) from None
        if principal is None:
            route = self.table.route(model)
        else:
            record.key = principal.id
            route = Guard.route(principal, self.table, model)
            record.model = route.model  # a rate-limited request is counted by its route
            limiter = principal.limiter
            if limiter is not None:
                limiter.admit()  # last: a refused request does not use the quota
        record.model = route.model
        resume: ResumeState | None = None
        payload = request
        if inbound.streaming and route.resume:
            resume = ResumeState.for_request(request)
            payload = request + WANT_TOKEN_IDS
        if guard is None:
            metadata = forwarded(inbound.metadata)
        else:
            metadata = forwarded(inbound.metadata, _HOP_HEADERS_WITH_AUTH)
        remaining = inbound.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        # Only a key with a token limit needs its answers' usage read.
        charged = limiter if limiter is not None and limiter.tokens is not None else None
        key = None
        if route.affinity is not None:  # only prefix_affinity routes read more of a request
            key = route.affinity.key(request, inbound.metadata)
        view = RequestView(route.model, key, len(request))
        return Call(inbound, record, route, view, payload, metadata, deadline, charged, resume)
