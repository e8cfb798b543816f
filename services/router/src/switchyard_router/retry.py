"""Retry decisions and the retry budget.

A retry goes to another endpoint, only for failures another endpoint can fix
(UNAVAILABLE, RESOURCE_EXHAUSTED, an attempt's own timeout), only inside the
caller's deadline, and only while the retry budget allows: retries in flight
may not exceed ``budget_percent`` of requests in flight (or
``min_retry_concurrency``), so a failing fleet is not hammered with retries.
"""

from __future__ import annotations

import grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class RetryBudget:
    """Envoy-style retry budget over concurrent requests and retries."""

    def __init__(self, budget_percent: float, min_retry_concurrency: int) -> None:
        self.budget_percent = budget_percent
        self.min_retry_concurrency = min_retry_concurrency
        self.active_requests = 0
        self.active_retries = 0

    def allows_retry(self) -> bool:
        limit = max(self.min_retry_concurrency, self.active_requests * self.budget_percent / 100)
        return self.active_retries < limit
