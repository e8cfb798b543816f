"""The one interface to fleet state: per-key rate limits, token budgets and the
response cache, whether each router process keeps them (``local``) or a fleet of
routers shares them in Redis (``redis_state``).

Admission asks once per request (:meth:`FleetState.admit`, at most one round trip
to Redis): the key's request and token rates, its budget reservation and the
cache lookup together. What follows is off the request's path or rare: a stream
that outgrows its reservation asks for more (:meth:`FleetState.extend`); when the
request ends, its usage settles the reservation and charges the token rate
(:meth:`FleetState.settle`), and a cacheable answer is stored
(:meth:`FleetState.store`), both written in the background.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import grpc

from switchyard_common.status import StatusError
from switchyard_router.fleet.budget import Period
from switchyard_router.fleet.config import TokenBudgetConfig


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """An API key's limits, as configured (equal limits: equal objects, so a
    reload that leaves them alone keeps the key's counters)."""

    key_id: str
    requests_per_minute: float | None = None
    request_burst: float = 0.0
    tokens_per_minute: float | None = None
    token_burst: float = 0.0
    budget: TokenBudgetConfig | None = None

    @classmethod
    def of(
        cls,
        key_id: str,
        requests_per_minute: float | None,
        request_burst: int | None,
        tokens_per_minute: float | None,
        token_burst: int | None,
        budget: TokenBudgetConfig | None,
    ) -> KeyLimits | None:
        """The limits of a key (None when it has none); a burst defaults to a minute's worth."""
        if requests_per_minute is None and tokens_per_minute is None and budget is None:
            return None
        return cls(
            key_id,
            requests_per_minute,
            _capacity(requests_per_minute, request_burst),
            tokens_per_minute,
            _capacity(tokens_per_minute, token_burst),
            budget,
        )

    @property
    def rates(self) -> tuple[float | None, float, float | None, float]:
        """The rate settings alone (a budget change keeps the key's buckets)."""
        return (
            self.requests_per_minute,
            self.request_burst,
            self.tokens_per_minute,
            self.token_burst,
        )

    @property
    def needs_usage(self) -> bool:
        """Whether the key's answers must be counted (a token rate or a budget)."""
        return self.tokens_per_minute is not None or self.budget is not None


def _capacity(per_minute: float | None, burst: int | None) -> float:
    if per_minute is None:
        return 0.0
    return float(burst if burst is not None else max(1, math.ceil(per_minute)))


@dataclass(frozen=True, slots=True)
class Ask:
    """What admission asks of the fleet state for one request."""

    limits: KeyLimits | None
    """The caller's key limits (None: none, or auth is off)."""
    reserve: int = 0
    """Budget tokens to reserve (0: the key has no budget)."""
    partial: bool = False
    """Whether less than ``reserve`` will do (a stream, cut off when it runs out)."""
    cache_key: bytes | None = None
    """Look up this cached answer (None: not cacheable, or bypassed)."""


@dataclass(slots=True)
class Ticket:
    """What the fleet state granted one request; settled when the request ends."""

    limits: KeyLimits | None
    granted: int = 0
    """Budget tokens reserved for the request (grows when a stream extends it)."""
    periods: tuple[Period, ...] = ()
    """The budget periods the reservation was made in (settled in those)."""
    cached: bytes | None = None
    """A cached answer: the request is answered from it, with no model tokens."""
    shared: bool = False
    """Granted by the fleet's Redis (settled there), not this process's own counters."""
    spent: Period | None = None
    """The period whose budget refused an extension."""


class FleetState(abc.ABC):
    """Limits, budgets and cached answers behind one interface (see the module doc)."""

    shared = False
    """Whether the state is shared with other router processes (Redis)."""

    async def start(self) -> None:  # noqa: B027 - optional
        """Connects and starts background work (before the first request)."""

    @abc.abstractmethod
    async def admit(self, ask: Ask) -> Ticket:
        """Admits one request: counts it against the key's request rate, checks its
        token rate, reserves its budget and looks up its cached answer. Raises
        ``StatusError`` (RESOURCE_EXHAUSTED with RetryInfo) when a limit says no."""

    @abc.abstractmethod
    async def extend(self, ticket: Ticket, tokens: int) -> int:
        """Reserves up to ``tokens`` more for a stream that outgrew its reservation, adds
        them to ``ticket.granted`` and returns how many (0: the budget is spent; then
        ``ticket.spent`` says which period's)."""

    @abc.abstractmethod
    def settle(self, ticket: Ticket, used: int) -> None:
        """Ends a request: ``used`` tokens (prompt + completion from its usage, or what
        a cut-off stream delivered) replace its reservation and charge the token rate."""

    @abc.abstractmethod
    def store(self, key: bytes, entry: bytes, ttl_seconds: float, model: str) -> None:
        """Keeps an answer for ``ttl_seconds`` (``model``: the route, for metrics)."""

    def forget_keys_except(self, key_ids: set[str]) -> None:  # noqa: B027 - optional
        """Drops the counters of keys no longer configured (a reload)."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Stops background work and closes connections."""


def rate_limited(limit: str, per_minute: float, capacity: float, wait: float) -> StatusError:
    """RESOURCE_EXHAUSTED with RetryInfo for a request over a key's rate."""
    wait = math.ceil(wait * 1000) / 1000  # whole milliseconds, never early
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"rate limit reached: this API key's {limit} is {per_minute:g} "
        f"(burst {capacity:g}); retry in {wait:.3f}s",
        reason="RATE_LIMITED",
        metadata={"limit": limit},
        retry_after=wait,
    )


def budget_exhausted(period: Period, left: int, want: int = 0, cut: bool = False) -> StatusError:
    """RESOURCE_EXHAUSTED with RetryInfo (when the period ends) for a budget that cannot
    pay for a request (``left`` tokens, ``want`` reserved), or for the rest of a stream
    (``cut``)."""
    limit = f"token_budget.per_{period.name}"
    if cut:
        what = "the stream was ended after the tokens already paid for"
    elif left > 0:
        what = (
            f"{left} tokens are left and this request reserves {want} (its max_tokens, or "
            "reserve_tokens): ask for fewer, or stream"
        )
    else:
        what = "it is spent"
    renews = math.ceil(period.seconds_left)
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"token budget reached: this API key's {limit} is {period.budget}; {what}; "
        f"it renews in {renews}s",
        reason="BUDGET_EXHAUSTED",
        metadata={"limit": limit},
        retry_after=float(renews),
    )
