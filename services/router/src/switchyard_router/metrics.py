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
EJECTIONS_ACTIVE = Gauge(
    "switchyard_router_ejections_active",
    "Endpoints ejected now, by cluster.",
    ["cluster"],
)
EJECTIONS_OVERFLOW = Counter(
    "switchyard_router_ejections_overflow",
    "Ejections not made because max_ejection_percent of the cluster was ejected already.",
    ["cluster"],
)
IN_FLIGHT = Gauge(
    "switchyard_router_in_flight_requests",
    "Generate and StreamGenerate calls in progress (what limits.max_in_flight counts).",
)
OVERLOADED = Counter(
    "switchyard_router_overloaded",
    "Calls refused with RESOURCE_EXHAUSTED OVERLOADED, by route and by the limit that "
    "refused them (scope: router or route).",
    ["model", "scope"],
)
REFUSED_STREAMS = Counter(
    "switchyard_router_upstream_refused_streams",
    "Calls a model server refused (HTTP/2 REFUSED_STREAM, never processed) and the "
    "router sent again at once, by cluster.",
    ["cluster"],
)
UPSTREAM_CONNECTIONS = Gauge(
    "switchyard_router_upstream_connections",
    "Connections the router holds to an endpoint now: 1, more while a burst needs them "
    "(connection_pool), fewer again after idle_timeout_seconds without calls.",
    ["cluster", "endpoint"],
)
UPSTREAM_CONNECTION_IDLE_TIMEOUTS = Counter(
    "switchyard_router_upstream_connection_idle_timeouts",
    "Connections to model servers closed after connection_pool.idle_timeout_seconds "
    "without a call (Envoy's upstream_cx_idle_timeout), by cluster.",
    ["cluster"],
)
HEALTHY_PANIC = Counter(
    "switchyard_router_lb_healthy_panic",
    "Attempts routed in panic (the priority's healthy share was below "
    "healthy_panic_threshold), by route.",
    ["model"],
)
CACHE_LOOKUPS = Counter(
    "switchyard_router_cache_lookups",
    "Requests on routes with a response cache, by route and result: hit (answered from "
    "the cache), miss, bypass (cache-control: no-cache) or nondeterministic (not cacheable).",
    ["model", "result"],
)
CACHE_STORES = Counter(
    "switchyard_router_cache_stores",
    "Answers written to the response cache, by route.",
    ["model"],
)
CACHE_ENTRIES = Gauge(
    "switchyard_router_cache_entries", "Answers held by this process's memory cache."
)
CACHE_BYTES = Gauge("switchyard_router_cache_bytes", "Bytes held by this process's memory cache.")
BUDGET_CUTOFFS = Counter(
    "switchyard_router_budget_cutoffs",
    "Streams ended with RESOURCE_EXHAUSTED because the key's token budget ran out, by route.",
    ["model"],
)
REDIS_UP = Gauge(
    "switchyard_router_redis_up",
    "1 while the fleet's Redis answers (limits and cache are shared), 0 while the router "
    "falls back to its own (only with limits_backend or response_cache on redis).",
)
REDIS_ERRORS = Counter(
    "switchyard_router_redis_errors",
    "Redis operations that failed or timed out (each one switches to local limits).",
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
    cache: str | None = None  # on a cached route: hit, miss, bypass or nondeterministic

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
        if self.cache is not None:
            fields["cache"] = self.cache
        log.info(
            "request " + " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields}
        )
