"""Per-request records and what `switchyard bench` computes from them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

OK = "OK"
STAT_KEYS = ("count", "mean", "p50", "p90", "p95", "p99", "max")


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it. Times are seconds since the run started.

    ``scheduled`` is when the load generator meant to send it; in an open loop
    latency and time to first token count from there (a request sent late
    because the client fell behind is charged for the wait), in a closed loop
    it equals ``sent``.
    """

    index: int
    scheduled: float
    sent: float
    finished: float
    code: str
    first_token: float | None = None
    last_token: float | None = None
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.code == OK

    @property
    def latency(self) -> float:
        return self.finished - self.scheduled

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.scheduled

    @property
    def inter_token_latency(self) -> float | None:
        """Mean gap between this request's tokens after the first (needs two tokens)."""
        if self.first_token is None or self.last_token is None or self.output_tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.output_tokens - 1)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of sorted values, interpolating linearly between ranks."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p95, p99 and max of ``values`` (seconds, scaled to ms)."""
    if not values:
        return {key: (0 if key == "count" else None) for key in STAT_KEYS}
    ordered = sorted(v * scale for v in values)
    return {
        "count": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1],
    }


@dataclass(frozen=True)
class TargetResult:
    """Every request one target answered, and the wall time its load ran."""

    target: str
    records: list[RequestRecord]
    wall_seconds: float

    def summary(self) -> dict[str, object]:
        """The target's entry in the JSON document (keys fixed by schema v1)."""
        ok = [r for r in self.records if r.ok]
        errors = Counter(r.code for r in self.records if not r.ok)
        output_tokens = sum(r.output_tokens for r in ok)
        wall = self.wall_seconds
        return {
            "target": self.target,
            "requests": {
                "total": len(self.records),
                "ok": len(ok),
                "errors": len(self.records) - len(ok),
            },
            "errors_by_code": dict(sorted(errors.items())),
            "wall_seconds": wall,
            "requests_per_second": len(self.records) / wall if wall > 0 else 0.0,
            "ok_requests_per_second": len(ok) / wall if wall > 0 else 0.0,
            "output_tokens": output_tokens,
            "output_tokens_per_second": output_tokens / wall if wall > 0 else 0.0,
            "latency_ms": distribution([r.latency for r in ok]),
            "ttft_ms": distribution([t for r in ok if (t := r.ttft) is not None]),
            "inter_token_latency_ms": distribution(
                [t for r in ok if (t := r.inter_token_latency) is not None]
            ),
            "send_lag_ms": distribution([r.sent - r.scheduled for r in self.records]),
            "samples": [_sample(r) for r in sorted(self.records, key=lambda r: r.index)],
        }


def _sample(record: RequestRecord) -> dict[str, object]:
    ttft = record.ttft
    return {
        "index": record.index,
        "scheduled_s": round(record.scheduled, 6),
        "sent_s": round(record.sent, 6),
        "code": record.code,
        "latency_ms": round(record.latency * 1000, 3),
        "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
        "output_tokens": record.output_tokens,
    }


SAMPLE_KEYS = ("index", "scheduled_s", "sent_s", "code", "latency_ms", "ttft_ms", "output_tokens")
