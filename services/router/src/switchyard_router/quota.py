"""Per-key rate limits: token buckets for requests and for model tokens per minute.

Requests are counted when they arrive. Model tokens (prompt + completion) are
counted when an answer arrives, from its ``usage`` (the unary response, or the
last message of a stream), since nobody knows them before: a request is
admitted while the key's token bucket is not empty, and its usage is charged
when it ends, so one long answer may overdraw the bucket; later requests then
wait until it has refilled. A stream that ends without a final message (the
caller left, or it failed) is not charged tokens; its request still counts.
"""

from __future__ import annotations

import math
import time

import grpc

from switchyard_common.status import StatusError
from switchyard_router.config import APIKeyConfig


class TokenBucket:
    """Refills at ``per_minute / 60`` per second up to ``burst``; may go below zero."""

    def __init__(self, per_minute: float, burst: int | None) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, math.ceil(per_minute)))
        self.level = self.capacity
        self._updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def wait(self) -> float:
        """Seconds until the bucket holds one whole token (0: now)."""
        self._refill()
        return 0.0 if self.level >= 1 else (1 - self.level) / self.rate

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


def _exhausted(limit: str, bucket: TokenBucket, wait: float) -> StatusError:
    wait = math.ceil(wait * 1000) / 1000  # whole milliseconds, never early
    return StatusError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"rate limit reached: this API key's {limit} is {bucket.per_minute:g} "
        f"(burst {bucket.capacity:g}); retry in {wait:.3f}s",
        reason="RATE_LIMITED",
        metadata={"limit": limit},
        retry_after=wait,
    )


class KeyLimiter:
    """The buckets of one API key."""

    def __init__(self, key: APIKeyConfig) -> None:
        self.settings = (
            key.requests_per_minute,
            key.request_burst,
            key.tokens_per_minute,
            key.token_burst,
        )
        self.requests = (
            TokenBucket(key.requests_per_minute, key.request_burst)
            if key.requests_per_minute
            else None
        )
        self.tokens = (
            TokenBucket(key.tokens_per_minute, key.token_burst) if key.tokens_per_minute else None
        )

    def admit(self) -> None:
        """Counts one request; RESOURCE_EXHAUSTED (with RetryInfo) if over a limit.

        When both limits are reached, the error names the one that frees up last,
        so a caller that waits the stated time is admitted.
        """
        refusal: tuple[float, str, TokenBucket] | None = None
        for limit, bucket in (
            ("tokens_per_minute", self.tokens),
            ("requests_per_minute", self.requests),
        ):
            if bucket is not None:
                wait = bucket.wait()
                if wait and (refusal is None or wait > refusal[0]):
                    refusal = (wait, limit, bucket)
        if refusal is not None:
            wait, limit, bucket = refusal
            raise _exhausted(limit, bucket, wait)
        if self.requests is not None:
            self.requests.take(1)

    def charge(self, tokens: int) -> None:
        """Charges an answer's prompt + completion tokens."""
        if self.tokens is not None and tokens > 0:
            self.tokens.take(tokens)
