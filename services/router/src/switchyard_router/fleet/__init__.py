"""Fleet state: per-key rate limits, token budgets and the response cache, behind one
interface (``state.FleetState``) with a local implementation (``local``: this
process alone) and a Redis one (``redis_state``: every router replica shares it).

Admission asks it once per request; the request path does at most one round trip
to Redis. Any front (gRPC today, HTTP next) gets all of it through admission.
"""

from __future__ import annotations

from collections.abc import Callable

from switchyard_router.fleet.cache import MemoryCache
from switchyard_router.fleet.config import LimitsBackend, RedisConfig, ResponseCacheConfig
from switchyard_router.fleet.local import LocalFleetState
from switchyard_router.fleet.state import Ask, FleetState, KeyLimits, Ticket

__all__ = ["Ask", "FleetState", "KeyLimits", "Ticket", "build_fleet_state"]


def build_fleet_state(
    limits_backend: LimitsBackend,
    redis: RedisConfig | None,
    cache: ResponseCacheConfig,
    on_reachability: Callable[[bool], None] = lambda up: None,
) -> FleetState:
    """The fleet state a config asks for (call ``start()`` on a Redis one)."""
    memory = None
    if cache.backend == "memory":
        memory = MemoryCache(cache.max_entries, cache.max_bytes)
    local = LocalFleetState(memory)
    if redis is None or (limits_backend == "local" and cache.backend == "memory"):
        return local
    from switchyard_router.fleet.redis_state import RedisFleetState  # only fleets need redis

    return RedisFleetState(
        redis,
        local,
        shares_limits=limits_backend == "redis",
        shares_cache=cache.backend == "redis",
        on_reachability=on_reachability,
    )
