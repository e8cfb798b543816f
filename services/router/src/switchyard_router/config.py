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

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchyard.configfile import load_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutlierDetectionConfig(_Strict):
    """Passive health: eject an endpoint after consecutive failures."""

    consecutive_failures: int = Field(default=3, ge=1)
    base_ejection_seconds: float = Field(default=1.0, gt=0)
    max_ejection_seconds: float = Field(default=30.0, gt=0)


class ClusterConfig(_Strict):
    """A pool of model servers that serve the same models."""

    endpoints: list[str] = Field(
        min_length=1,
        description="host:port of each model server, or dns:///name:port (every address "
        "the name resolves to, re-resolved every dns_refresh_seconds)",
    )
    dns_refresh_seconds: float = Field(default=10.0, gt=0)
    keepalive_seconds: float = Field(
        default=10.0, ge=1, description="HTTP/2 ping interval; a hung server is dropped"
    )
    keepalive_timeout_seconds: float = Field(
        default=5.0, gt=0, description="after keepalive_seconds + this without an answer"
    )
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()

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


class RouteConfig(_Strict):
    """A public model name and its targets."""

    model: str = Field(min_length=1)
    targets: list[TargetConfig] = Field(min_length=1)
    resume: bool = Field(
        default=False,
        description="continue a stream on another endpoint when its model server fails "
        "after tokens were sent",
    )


class RouterConfig(_Strict):
    """The whole router config."""

    listen: str = "127.0.0.1:50051"
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
        return self


def load_router_config(path: Path) -> RouterConfig:
    """Reads, expands and validates a router config file (raises ConfigError)."""
    return load_config(path, RouterConfig)
