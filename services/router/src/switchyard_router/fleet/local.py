"""Fleet state kept by this router process alone: rate limits (``rates``), budgets
(``budget``) and a memory cache (``cache``). With N router replicas a key gets up
to N times its limits; ``redis_state`` shares them instead, and falls back on
this when Redis cannot be reached."""

from __future__ import annotations

from switchyard_router import metrics
from switchyard_router.fleet.budget import BudgetExhaustedError, LocalBudgets, current_periods
from switchyard_router.fleet.cache import MemoryCache
from switchyard_router.fleet.rates import KeyLimiter
from switchyard_router.fleet.state import Ask, FleetState, KeyLimits, Ticket, budget_exhausted


class LocalFleetState(FleetState):
    """Counters and cached answers in this process (no I/O: nothing here awaits)."""

    def __init__(self, cache: MemoryCache | None = None) -> None:
        self.cache = cache
        """None: answers are not kept here (the cache is in Redis)."""
        self.budgets = LocalBudgets()
        self._limiters: dict[str, KeyLimiter] = {}

    def limiter(self, limits: KeyLimits) -> KeyLimiter:
        """The key's buckets; new ones when its rate settings changed (a reload)."""
        found = self._limiters.get(limits.key_id)
        if found is None or found.limits is not limits:
            if found is None or found.limits.rates != limits.rates:
                found = self._limiters[limits.key_id] = KeyLimiter(limits)
            found.limits = limits
        return found

    async def admit(self, ask: Ask) -> Ticket:
        return self.admit_now(ask)

    def admit_now(self, ask: Ask, look_up: bool = True) -> Ticket:
        """``admit`` without awaiting (``look_up``: whether to use this process's cache)."""
        limits = ask.limits
        limiter = None
        if limits is not None:
            limiter = self.limiter(limits)
            limiter.check()
        cached = None
        if look_up and ask.cache_key is not None and self.cache is not None:
            cached = self.cache.get(ask.cache_key)
        ticket = Ticket(limits, cached=cached)
        if cached is None and ask.reserve and limits is not None and limits.budget is not None:
            ticket.periods = current_periods(limits.budget)
            try:
                ticket.granted = self.budgets.reserve(
                    limits.key_id, ticket.periods, ask.reserve, ask.partial
                )
            except BudgetExhaustedError as error:
                raise budget_exhausted(error.period, error.left, ask.reserve) from None
        if limiter is not None:
            limiter.take_request()
        return ticket

    async def extend(self, ticket: Ticket, tokens: int) -> int:
        if ticket.limits is None or not ticket.periods:
            return 0
        try:
            more = self.budgets.extend(ticket.limits.key_id, ticket.periods, tokens)
        except BudgetExhaustedError as error:
            ticket.spent = error.period
            return 0
        ticket.granted += more
        return more

    def settle(self, ticket: Ticket, used: int) -> None:
        limits = ticket.limits
        if limits is None:
            return
        self.limiter(limits).charge(used)
        if ticket.periods and used != ticket.granted:
            self.budgets.settle(limits.key_id, ticket.periods, used - ticket.granted)

    def store(self, key: bytes, entry: bytes, ttl_seconds: float, model: str) -> None:
        if self.cache is not None:
            self.cache.put(key, entry, ttl_seconds)
            metrics.CACHE_STORES.labels(model).inc()

    def forget_keys_except(self, key_ids: set[str]) -> None:
        for key_id in set(self._limiters) - key_ids:
            del self._limiters[key_id]
        self.budgets.forget_keys_except(key_ids)
