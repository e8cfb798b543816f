"""Retry decisions and the retry budget.

A retry goes to another endpoint, only for failures another endpoint can fix
(UNAVAILABLE, RESOURCE_EXHAUSTED, an attempt's own timeout, a call the model
server cancelled, which the proxy treats as UNAVAILABLE), only inside the
caller's deadline, and only while the retry budget has tokens.

The budget is gRPC's retry throttling: it holds up to ``max_tokens``; each
attempt that a model server failed (its own error answer, a per-try timeout)
takes one, each success gives back ``token_ratio``; retries are allowed while
more than half remain. A fleet that keeps failing gets at most about one retry
per ``1 / token_ratio`` successes, so it is not hammered with extra load. An
attempt whose model server went away (its connection broke, or it left the
config) takes none (``proxy``): a replica dying with hundreds of calls in flight
has them all retried once elsewhere, which adds no load.
"""

from __future__ import annotations

import grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class RetryBudget:
    """gRPC-style retry throttling shared by every request of the router."""

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = max_tokens

    def configure(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self.tokens = min(self.tokens, max_tokens)

    def record_success(self) -> None:
        self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def record_failure(self) -> None:
        self.tokens = max(0.0, self.tokens - 1)

    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2
