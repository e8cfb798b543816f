"""Prometheus metrics of the router (served on ``metrics_listen``).

Labels are bounded: ``model`` is a configured route (or ``unknown``),
``cluster`` and ``endpoint`` come from the config (or its DNS names), ``code``
is a gRPC status name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

from switchyard_common import logs

log = logging.getLogger("switchyard.router.requests")

REQUESTS = Counter(
    "switchyard_router_requests",
    "Requests finished, by method, route and gRPC status code.",
    ["method", "model", "code"],
)
REQUEST_DURATION = Histogram(
    "switchyard_router_request_duration_seconds",
    "Time from a request's arrival at the router to its end.",
    ["method", "model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RETRIES = Counter(
    "switchyard_router_retries",
    "Attempts after the first (failovers to another endpoint), by route.",
    ["model"],
)
RESUMES = Counter(
    "switchyard_router_resumes",
    "Streams continued on another endpoint after a failure mid-stream, by route.",
    ["model"],
)
ENDPOINT_HEALTHY = Gauge(
    "switchyard_router_endpoint_healthy",
    "1 while an endpoint takes new requests (healthy, not ejected), else 0.",
    ["cluster", "endpoint"],
)
ENDPOINT_REPORTED_REQUESTS = Gauge(
    "switchyard_router_endpoint_reported_requests",
    "Requests running or waiting at an endpoint (state), from every router and client, "
    "as its model server last reported (ORCA); 0 before a report.",
    ["cluster", "endpoint", "state"],
)
ENDPOINT_REPORTED_KV_CACHE = Gauge(
    "switchyard_router_endpoint_reported_kv_cache_usage",
    "The share of an endpoint's KV cache in use, as its model server last reported.",
    ["cluster", "endpoint"],
)
EJECTIONS = Counter(
    "switchyard_router_ejections",
    "Outlier-detection ejections, by endpoint.",
    ["cluster", "endpoint"],
)


class _Switch:
    enabled = True


ACCESS_LOG = _Switch()
"""Whether each request's outcome is logged (the router's ``access_log`` option)."""


@dataclass
class RequestRecord:
    """One request's outcome, recorded when it ends."""

    method: str
    model: str = "unknown"
    code: str = "OK"
    started: float = field(default_factory=time.monotonic)
    span: Any = None  # the request's span when tracing is on
    attempts: int = 0
    key: str | None = None  # the API key's configured id (never the key), with auth on

    def finish(self) -> None:
        REQUESTS.labels(self.method, self.model, self.code).inc()
        REQUEST_DURATION.labels(self.method, self.model).observe(time.monotonic() - self.started)
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[self.code].value[0])
            if self.code != "OK":
                self.span.set_status(Status(StatusCode.ERROR, self.code))
            self.span.end()
        if ACCESS_LOG.enabled and log.isEnabledFor(logging.INFO):
            self._log()

    def _log(self) -> None:
        total_ms = round((time.monotonic() - self.started) * 1e3, 1)
        fields = {
            "method": self.method,
            "model": self.model,
            "code": self.code,
            "attempts": self.attempts,
            "total_ms": total_ms,
            **logs.trace_ids(self.span),
        }
        if self.key is not None:
            fields["key_id"] = self.key
        log.info(
            "request " + " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields}
        )
