"""Overload: how many calls the router takes at once, router-wide and per route.

Past ``limits.max_in_flight`` (every route together) or a route's own
``max_in_flight``, a Generate or StreamGenerate call is refused at admission with
RESOURCE_EXHAUSTED, RetryInfo and ErrorInfo reason ``OVERLOADED``: the caller backs
off and comes back, rather than take the router for down (UNAVAILABLE) and fail
over. HTTP/2's own per-connection limit is set far above this, so that it never
refuses what admission would take.

The counts outlive a config reload (a reload replaces the limits, not the calls in
progress).
"""

from __future__ import annotations

import grpc

from switchyard_common.status import StatusError
from switchyard_router import metrics

OVERLOAD_RETRY_AFTER_SECONDS = 1.0


class InFlight:
    """Generate and StreamGenerate calls in progress, in all and per route."""

    def __init__(self) -> None:
        self.total = 0
        self.by_route: dict[str, int] = {}
        self.max_total: int | None = None
        """``limits.max_in_flight`` (None: no router-wide limit)."""
        metrics.IN_FLIGHT.set_function(lambda: self.total)

    def enter(self, route: str, route_max: int | None) -> None:
        """Counts a call of ``route`` in, or refuses it (RESOURCE_EXHAUSTED OVERLOADED)
        when the router or the route is at its limit."""
        if self.max_total is not None and self.total >= self.max_total:
            raise _overloaded(
                f"the router has {self.total} calls in progress, its limit (limits.max_in_flight)",
                "router",
                route,
                self.max_total,
            )
        count = self.by_route.get(route, 0)
        if route_max is not None and count >= route_max:
            raise _overloaded(
                f"model {route!r} has {count} calls in progress at this router, its limit "
                "(the route's max_in_flight)",
                "route",
                route,
                route_max,
            )
        self.total += 1
        self.by_route[route] = count + 1

    def leave(self, route: str) -> None:
        """A call of ``route`` counted in by :meth:`enter` ended."""
        self.total -= 1
        self.by_route[route] -= 1


def _overloaded(message: str, scope: str, route: str, limit: int) -> StatusError:
    metrics.OVERLOADED.labels(route, scope).inc()
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{message}; retry after {OVERLOAD_RETRY_AFTER_SECONDS:g}s",
        reason="OVERLOADED",
        metadata={"scope": scope, "model": route, "max_in_flight": str(limit)},
        retry_after=OVERLOAD_RETRY_AFTER_SECONDS,
    )
