"""Token budgets: prompt + completion tokens per key per calendar period (a UTC
day, a UTC month), and this process's own ledger of them.

A request reserves tokens when it is admitted (its ``max_tokens``, or the key's
``reserve_tokens`` when unset), so concurrent requests cannot together spend
more than is left; when it ends, its usage replaces the reservation. A stream may
be admitted with less than it asked for while some budget is left: it extends
its reservation as it goes, and is ended when the budget runs out (``metering``).
The same arithmetic runs in Redis for a fleet (``lua/``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from switchyard_router.fleet.config import TokenBudgetConfig

_SLACK_SECONDS = 86_400  # a finished period's counter outlives it by a day: late settlements


@dataclass(frozen=True, slots=True)
class Period:
    """One budget period of a key, as of now."""

    name: str
    """``day`` or ``month``."""
    id: str
    """``2025-06-01`` or ``2025-06``: which day or month (UTC)."""
    budget: int
    seconds_left: float
    """Until the period ends and the budget renews."""

    @property
    def ttl_seconds(self) -> int:
        """How long its counter is kept."""
        return int(self.seconds_left) + _SLACK_SECONDS


def current_periods(
    budget: TokenBudgetConfig, now: dt.datetime | None = None
) -> tuple[Period, ...]:
    """The key's budget periods that contain ``now`` (UTC; default: the clock)."""
    now = now or dt.datetime.now(dt.UTC)
    periods = []
    if budget.per_day is not None:
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = day + dt.timedelta(days=1)
        periods.append(Period("day", day.strftime("%Y-%m-%d"), budget.per_day, _left(end, now)))
    if budget.per_month is not None:
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (month + dt.timedelta(days=32)).replace(day=1)
        periods.append(Period("month", month.strftime("%Y-%m"), budget.per_month, _left(end, now)))
    return tuple(periods)


def _left(end: dt.datetime, now: dt.datetime) -> float:
    return (end - now).total_seconds()


class BudgetExhaustedError(Exception):
    """No reservation: ``period`` has ``left`` tokens (0 or fewer: spent)."""

    def __init__(self, period: Period, left: int) -> None:
        super().__init__(period.name)
        self.period = period
        self.left = left


class LocalBudgets:
    """This process's budget counters: per key and period, tokens reserved or spent."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], tuple[str, int]] = {}  # (key, period) -> (id, n)

    def _used(self, key_id: str, period: Period) -> int:
        found = self._spent.get((key_id, period.name))
        return found[1] if found is not None and found[0] == period.id else 0

    def _add(self, key_id: str, period: Period, tokens: int) -> None:
        self._spent[(key_id, period.name)] = (period.id, self._used(key_id, period) + tokens)

    def reserve(self, key_id: str, periods: tuple[Period, ...], want: int, partial: bool) -> int:
        """Reserves ``want`` tokens in every period (or what is left, if ``partial``);
        raises BudgetExhaustedError when a period cannot give it."""
        granted = want
        for period in periods:
            left = period.budget - self._used(key_id, period)
            if left <= 0 or (left < want and not partial):
                raise BudgetExhaustedError(period, left)
            granted = min(granted, left)
        for period in periods:
            self._add(key_id, period, granted)
        return granted

    def extend(self, key_id: str, periods: tuple[Period, ...], want: int) -> int:
        """Up to ``want`` more tokens; BudgetExhaustedError when a period is spent."""
        return self.reserve(key_id, periods, want, partial=True)

    def settle(self, key_id: str, periods: tuple[Period, ...], difference: int) -> None:
        """Adds ``difference`` (usage minus reservation) in the request's periods; a
        period that has ended since is left alone."""
        for period in periods:
            found = self._spent.get((key_id, period.name))
            if found is not None and found[0] == period.id:
                self._spent[(key_id, period.name)] = (period.id, found[1] + difference)

    def forget_keys_except(self, key_ids: set[str]) -> None:
        for entry in [e for e in self._spent if e[0] not in key_ids]:
            del self._spent[entry]
