"""Per-key rate limits in this process: token buckets for requests and for model
tokens per minute (the Redis buckets of a fleet do the same arithmetic, ``lua/``).

Requests are counted when they arrive. Model tokens (prompt + completion) are
counted when an answer ends, from its ``usage`` (or, for a stream cut off before
its last message, from the tokens it delivered), since nobody knows them before:
a request is admitted while the key's token bucket is not empty, and its usage is
charged when it ends, so one long answer may overdraw the bucket; later requests
then wait until it has refilled.
"""

from __future__ import annotations

import time

from switchyard_router.fleet.state import KeyLimits, rate_limited


class TokenBucket:
    """Refills at ``per_minute / 60`` per second up to ``capacity``; may go below zero."""

    def __init__(self, per_minute: float, capacity: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = capacity
        self.level = capacity
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


class KeyLimiter:
    """The buckets of one API key."""

    def __init__(self, limits: KeyLimits) -> None:
        self.limits = limits
        self.requests = (
            TokenBucket(limits.requests_per_minute, limits.request_burst)
            if limits.requests_per_minute
            else None
        )
        self.tokens = (
            TokenBucket(limits.tokens_per_minute, limits.token_burst)
            if limits.tokens_per_minute
            else None
        )

    def check(self) -> None:
        """RESOURCE_EXHAUSTED (with RetryInfo) if a request now would be over a limit.

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
            raise rate_limited(limit, bucket.per_minute, bucket.capacity, wait)

    def take_request(self) -> None:
        """Counts one admitted request."""
        if self.requests is not None:
            self.requests.take(1)

    def admit(self) -> None:
        """Counts one request; RESOURCE_EXHAUSTED (with RetryInfo) if over a limit."""
        self.check()
        self.take_request()

    def charge(self, tokens: int) -> None:
        """Charges an answer's prompt + completion tokens."""
        if self.tokens is not None and tokens > 0:
            self.tokens.take(tokens)
