"""Router configuration: clusters of model-server endpoints and the routes onto them.

    listen: "0.0.0.0:50051"
    clusters:
      cpu:
        endpoints: ["127.0.0.1:50061"]
    routes:
      - model: smollm2-135m-instruct      # the public name clients use
        targets:
          - cluster: cpu
            model: smollm2-135m-instruct  # name at the cluster (default: same)

The words are Envoy's (cluster, endpoint, priority, weight) so that an
operator who knows a proxy knows this file. ``${VAR}`` / ``${VAR:-default}``
are replaced from the environment.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, FilePath, PrivateAttr, model_validator

from switchyard_common.configfile import load_config
from switchyard_common.listener import ChannelTLSConfig, ConnectionLimits, ServerTLSConfig
from switchyard_router.fleet.config import (
    LimitsBackend,
    RedisConfig,
    ResponseCacheConfig,
    RouteCacheConfig,
    TokenBudgetConfig,
)
from switchyard_router.load_balancing.picker import (
    DEFAULT_HEALTHY_PANIC_THRESHOLD,
    DEFAULT_LOAD_FACTOR,
    DEFAULT_OVERPROVISIONING_FACTOR,
    DEFAULT_POLICY,
    PolicyName,
)

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
OPEN_BY_DEFAULT = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutlierDetectionConfig(_Strict):
    """Passive health, as Envoy's outlier detection: eject an endpoint after
    consecutive failures, for a back-off that doubles with each ejection."""

    consecutive_failures: int = Field(default=3, ge=1)
    base_ejection_seconds: float = Field(default=1.0, gt=0)
    max_ejection_seconds: float = Field(default=30.0, gt=0)
    max_ejection_percent: float = Field(
        default=50.0,
        ge=0,
        le=100,
        description="never more of the cluster's endpoints ejected at once (rounded down, "
        "but at least one unless 0)",
    )
    successful_active_health_check_uneject_host: bool = Field(
        default=True,
        description="a fresh SERVING from the endpoint's health stream (after a reconnect, or "
        "after NOT_SERVING) ends its ejection; the doubled back-off is kept",
    )


class ReconnectBackoffConfig(_Strict):
    """How soon the router tries a lost model server again (connection attempts and
    health watches): from ``initial_seconds``, times 1.6 per failed try, up to
    ``max_seconds``, each pause spread by +-``jitter``."""

    initial_seconds: float = Field(default=0.1, ge=0.1)
    max_seconds: float = Field(default=0.3, ge=0.1)
    jitter: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectBackoffConfig:
        if self.max_seconds < self.initial_seconds:
            raise ValueError("max_seconds: must be at least initial_seconds")
        return self


class ConnectionPoolConfig(_Strict):
    """The router's connections to each model server of a cluster."""

    max_concurrent_streams: int = Field(
        default=500,
        ge=1,
        description="calls the router opens at once on one connection to a model server; "
        "past it, another connection (keep it at or below the model servers' "
        "limits.max_concurrent_streams; a refused stream teaches the router their real limit)",
    )
    max_connections: int = Field(
        default=8,
        ge=1,
        description="connections to one model server at most; past them, calls share the "
        "least busy one",
    )
    idle_timeout_seconds: float | None = Field(
        default=300.0,
        ge=1,
        description="a connection beyond the first that has carried no call for this long is "
        "closed (Envoy's idle_timeout; checked every second, so closed within a second more); "
        "the next burst opens it again. Five minutes: a load that comes back within minutes "
        "keeps its connections (no reconnect churn), while those a burst opened do not ping "
        "every keepalive_seconds for hours after it. The first connection (health watch, "
        "load reports) is never closed; null: never close any",
    )


class ClusterConfig(_Strict):
    """A pool of model servers that serve the same models."""

    endpoints: list[str] = Field(
        min_length=1,
        description="host:port of each model server, or dns:///name:port (every address "
        "the name resolves to, re-resolved every dns_refresh_seconds)",
    )
    dns_refresh_seconds: float = Field(default=10.0, gt=0)
    adapter_refresh_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how often each endpoint's ListModels is read for the LoRA adapters it "
        "holds (adapter affinity); 0: learn them only from the requests it serves",
    )
    keepalive_seconds: float = Field(
        default=10.0, ge=1, description="HTTP/2 ping interval; a hung server is dropped"
    )
    keepalive_timeout_seconds: float = Field(
        default=5.0, gt=0, description="after keepalive_seconds + this without an answer"
    )
    connect_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how long one connection attempt (TCP, TLS, HTTP/2 settings) may take "
        "(Envoy's connect_timeout); the reconnect back-off paces attempts, this bounds each",
    )
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()
    load_report_interval_seconds: float | None = Field(
        default=1.0,
        gt=0,
        description="how often each model server sends its load (ORCA, out of band), so "
        "that idle ones stay current; null: only the load reported with each response",
    )
    reconnect_backoff: ReconnectBackoffConfig = ReconnectBackoffConfig()
    connection_pool: ConnectionPoolConfig = ConnectionPoolConfig()
    tls: ChannelTLSConfig | None = Field(
        default=None, description="TLS (or mutual TLS) to this cluster's model servers"
    )

    @model_validator(mode="after")
    def _addresses(self) -> ClusterConfig:
        for index, endpoint in enumerate(self.endpoints):
            address = endpoint.removeprefix("dns:///")
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"endpoints[{index}]: expected host:port, got {endpoint!r}")
        return self


class RetryConfig(_Strict):
    """Retries of failed attempts on other endpoints, as Envoy's retry policy."""

    num_retries: int = Field(default=2, ge=0)
    per_try_timeout_seconds: float | None = Field(
        default=None, gt=0, description="for a stream, the wait for its first message"
    )
    budget_max_tokens: float = Field(
        default=100.0, gt=0, description="retry throttling: bucket size (gRPC's maxTokens)"
    )
    budget_token_ratio: float = Field(
        default=0.1, gt=0, description="tokens a success gives back (gRPC's tokenRatio)"
    )


class TargetConfig(_Strict):
    """Where a route sends requests."""

    cluster: str
    model: str | None = Field(default=None, description="model name at the cluster")
    priority: int = Field(default=0, ge=0, description="0 first; higher numbers are fallbacks")
    weight: int = Field(default=1, ge=1)


class AffinityConfig(_Strict):
    """``affinity:`` of a ``policy: prefix_affinity`` route: what makes requests
    share a model server, and how far one may be loaded past the others for it."""

    session_metadata_key: str | None = Field(
        default=None,
        pattern=r"^[0-9a-z_.-]+$",
        description="request metadata (e.g. x-session-id) whose value, when present, is the "
        "affinity key instead of the prefix",
    )
    prefix_bytes: int = Field(
        default=1024,
        ge=0,
        description="leading bytes of the system message and of the first user message (or "
        "of the prompt) that make the key; 0: sessions only",
    )
    block_bytes: int = Field(
        default=256, ge=1, description="the prefix counts in whole blocks of this many bytes"
    )
    load_factor: float = Field(
        default=DEFAULT_LOAD_FACTOR,
        ge=1.0,
        description="no endpoint takes more than this times the mean load; a key whose "
        "endpoint is full goes to the next on the ring",
    )


class RouteConfig(_Strict):
    """A public model name and its targets."""

    model: str = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=1)
    resume: bool = Field(
        default=False,
        description="continue a stream on another endpoint when its model server fails "
        "after tokens were sent",
    )
    policy: PolicyName = Field(
        default=DEFAULT_POLICY,
        description="how a target's endpoint is chosen: least_outstanding (the less busy of "
        "two at random), round_robin (each in turn) or prefix_affinity (requests with the same "
        "session or prompt prefix to the same endpoint, within a bound on its load)",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="calls of this route in progress at once; more get RESOURCE_EXHAUSTED "
        "OVERLOADED with RetryInfo (unset: only the router's limits.max_in_flight)",
    )
    healthy_panic_threshold: float = Field(
        default=DEFAULT_HEALTHY_PANIC_THRESHOLD,
        ge=0,
        le=100,
        description="percent: while the route's normalized total health is below 100, a "
        "priority with a smaller share of healthy endpoints is in panic and spreads its "
        "requests over its connected endpoints, ejected ones included (0: never)",
    )
    overprovisioning_factor: float = Field(
        default=DEFAULT_OVERPROVISIONING_FACTOR,
        ge=1.0,
        le=10.0,
        description="a priority's health is its healthy share times this, capped at 100%; "
        "what it lacks spills to the next priority (a factor: Envoy's API writes 1.4 as 140)",
    )
    cache: RouteCacheConfig | None = Field(
        default=None,
        description="replay answers to identical requests (see response_cache; unset: never)",
    )
    affinity: AffinityConfig | None = Field(
        default=None, description="prefix_affinity's settings (defaults when unset)"
    )

    @model_validator(mode="after")
    def _affinity_needs_its_policy(self) -> RouteConfig:
        if self.affinity is not None and self.policy != "prefix_affinity":
            raise ValueError(
                f"affinity: applies only to policy prefix_affinity (this route's policy is "
                f"{self.policy})"
            )
        return self


class APIKeyConfig(_Strict):
    """One API key, by the SHA-256 of its text (the key itself is never configured)."""

    id: str = Field(
        min_length=1, description="a name for logs and metrics (never the key or its hash)"
    )
    sha256: str | None = Field(default=None, description="hex SHA-256 of the key")
    sha256_file: FilePath | None = Field(
        default=None, description="a file holding the hex SHA-256 (a mounted Secret)"
    )
    models: list[str] | None = Field(
        default=None, description="routes (public model names) it may use; unset: all"
    )
    requests_per_minute: float | None = Field(default=None, gt=0)
    request_burst: int | None = Field(
        default=None, ge=1, description="requests at once (default: requests_per_minute)"
    )
    tokens_per_minute: float | None = Field(
        default=None, gt=0, description="prompt + completion tokens, from each answer's usage"
    )
    token_burst: int | None = Field(
        default=None, ge=1, description="tokens at once (default: tokens_per_minute)"
    )
    token_budget: TokenBudgetConfig | None = Field(
        default=None, description="prompt + completion tokens per UTC day and/or month"
    )
    cache_scope: str | None = Field(
        default=None,
        min_length=1,
        description="keys with the same cache_scope share cached answers (default: the id)",
    )
    _digest: bytes = PrivateAttr(default=b"")

    @model_validator(mode="after")
    def _hash(self) -> APIKeyConfig:
        if (self.sha256 is None) == (self.sha256_file is None):
            raise ValueError("set exactly one of sha256 and sha256_file")
        if self.sha256_file is not None:
            text, where = self.sha256_file.read_text().strip().lower(), "sha256_file"
            text = text.split()[0] if text else text  # `sha256sum` output works as it is
        else:
            text, where = (self.sha256 or "").strip().lower(), "sha256"
        if not _SHA256_HEX.fullmatch(text):
            # Never echo the value: it might be the key itself pasted by mistake.
            raise ValueError(f"{where}: expected 64 hex digits (the SHA-256 of the key)")
        self._digest = bytes.fromhex(text)
        return self

    @property
    def digest(self) -> bytes:
        return self._digest


class AuthConfig(_Strict):
    """``auth:``: API keys (``authorization: Bearer <key>``) and what each may use."""

    keys: list[APIKeyConfig] = Field(min_length=1)
    open_services: list[str] = Field(
        default=list(OPEN_BY_DEFAULT),
        description="gRPC services callable without a key (health and reflection by default)",
    )

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        ids = [key.id for key in self.keys]
        for index, key_id in enumerate(ids):
            if key_id in ids[:index]:
                raise ValueError(f"keys[{index}].id: {key_id!r} is used twice")
        digests = [key.digest for key in self.keys]
        for index, digest in enumerate(digests):
            if digest in digests[:index]:
                raise ValueError(f"keys[{index}]: the same key hash is configured twice")
        return self


class RouterLimitsConfig(ConnectionLimits):
    """``limits:`` of the router's listener, and its admission of calls."""

    max_in_flight: int | None = Field(
        default=2048,
        ge=1,
        description="Generate and StreamGenerate calls in progress at once, every route "
        "together; more get RESOURCE_EXHAUSTED OVERLOADED with RetryInfo (null: no limit)",
    )

    max_request_bytes: int | None = Field(
        default=None,
        ge=1,
        description="larger requests get INVALID_ARGUMENT (field `request`); checked on the "
        "raw bytes, so it costs nothing; max_message_bytes is gRPC's own hard cap",
    )


class RouterConfig(_Strict):
    """The whole router config."""

    listen: str = "127.0.0.1:50051"
    http_listen: str | None = Field(
        default=None,
        description="host:port of the OpenAI- and Anthropic-compatible HTTP front (unset: "
        "none); it uses the same `tls`, keys, limits and routes as the gRPC listener",
    )
    clusters: dict[str, ClusterConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(min_length=1)
    list_models_timeout_seconds: float = Field(default=2.0, gt=0)
    metrics_listen: str | None = Field(
        default=None, description="host:port for Prometheus /metrics (unset: no endpoint)"
    )
    access_log: bool = Field(
        default=True, description="one INFO line per request outcome (costs CPU per request)"
    )
    retry: RetryConfig = RetryConfig()
    drain_grace_seconds: float = Field(default=30.0, ge=0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    tls: ServerTLSConfig | None = Field(default=None, description="TLS on the listener")
    auth: AuthConfig | None = Field(default=None, description="API keys (unset: no auth)")
    limits: RouterLimitsConfig = RouterLimitsConfig()
    limits_backend: LimitsBackend = Field(
        default="local",
        description="where per-key rate limits and token budgets are counted: local (each "
        "router process alone) or redis (the fleet shares them; needs redis)",
    )
    redis: RedisConfig | None = Field(
        default=None, description="the Redis a fleet of routers shares (limits, budgets, cache)"
    )
    response_cache: ResponseCacheConfig = ResponseCacheConfig()

    @model_validator(mode="after")
    def _redis_when_used(self) -> RouterConfig:
        if self.redis is None:
            if self.limits_backend == "redis":
                raise ValueError("limits_backend: redis needs a redis: section (its url)")
            if self.response_cache.backend == "redis":
                raise ValueError("response_cache.backend: redis needs a redis: section (its url)")
        return self

    @model_validator(mode="after")
    def _references(self) -> RouterConfig:
        seen: set[str] = set()
        for index, route in enumerate(self.routes):
            if route.model in seen:
                raise ValueError(f"routes[{index}].model: {route.model!r} is routed twice")
            seen.add(route.model)
            for t_index, target in enumerate(route.targets):
                if target.cluster not in self.clusters:
                    raise ValueError(
                        f"routes[{index}].targets[{t_index}].cluster: unknown cluster "
                        f"{target.cluster!r} (clusters: {', '.join(sorted(self.clusters))})"
                    )
        for index, key in enumerate(self.auth.keys if self.auth else ()):
            for m_index, model in enumerate(key.models or ()):
                if model not in seen:
                    raise ValueError(
                        f"auth.keys[{index}].models[{m_index}]: no route {model!r} "
                        f"(routes: {', '.join(sorted(seen))})"
                    )
        return self


def load_router_config(path: Path) -> RouterConfig:
    """Reads, expands and validates a router config file (raises ConfigError)."""
    return load_config(path, RouterConfig)
