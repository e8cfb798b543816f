"""Model server configuration: a YAML file validated at start.

    listen: "127.0.0.1:50061"
    max_queue_per_model: 16
    drain_grace_seconds: 30
    backend:
      kind: llamacpp              # any installed backend (see `--list-backends`)
      models_dir: ${MODELS_DIR}   # the rest are the backend's own options

``${VAR}`` / ``${VAR:-default}`` are replaced from the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from switchyard_common.configfile import load_config
from switchyard_common.listener import ConnectionLimits, ServerTLSConfig
from switchyard_modelserver.models.model_defaults import ModelDefaultsConfig


class BackendSection(BaseModel):
    """``backend:``: the kind, plus that backend's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class InputLimits(ConnectionLimits):
    """``limits:``: what one request may ask for, and per-connection limits.

    The model server enforces the limits that need the parsed request (it parses
    it anyway); the router relays bytes and enforces only size, keys and rates.
    """

    # Routers keep at most connection_pool.max_concurrent_streams (500) calls on one
    # connection and open more connections past it; the default (4096, shared with
    # the router) leaves them room. The queue per model is the admission limit.
    # Routers ping every few seconds (keepalive_seconds >= 1) to find hung servers.
    min_ping_interval_seconds: float = Field(default=0.5, ge=0)
    max_request_bytes: int | None = Field(
        default=None, ge=1, description="larger requests get INVALID_ARGUMENT (field `request`)"
    )
    max_prompt_chars: int = Field(
        default=1_000_000, ge=1, description="prompt, or all message contents together"
    )
    max_messages: int = Field(default=1024, ge=1)
    max_stop_sequences: int = Field(default=8, ge=0)
    max_stop_sequence_chars: int = Field(default=256, ge=1)
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="ceiling on sampling.max_tokens for every model; an unset max_tokens "
        "becomes this",
    )
    max_tokens_per_model: dict[str, int] = Field(
        default_factory=dict, description="per model id or alias; overrides max_tokens"
    )


class ModelServerConfig(BaseModel):
    """The whole model server config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:50061"
    backend: BackendSection
    max_queue_per_model: int = Field(default=16, ge=0)
    queue_retry_after_seconds: float = Field(default=1.0, ge=0)
    drain_grace_seconds: float = Field(default=30.0, ge=0)
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    metrics_listen: str | None = Field(
        default=None, description="host:port for Prometheus /metrics (unset: no endpoint)"
    )
    stream_coalesce_ms: float = Field(
        default=10.0,
        ge=0,
        description="after the first token, at most one stream message per this many ms",
    )
    min_load_report_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="out-of-band load reports (ORCA) go out at most this often, whatever "
        "interval a router asks for",
    )
    tls: ServerTLSConfig | None = Field(default=None, description="TLS on the listener")
    limits: InputLimits = InputLimits()
    model_defaults: dict[str, ModelDefaultsConfig] = Field(
        default_factory=dict,
        description="per model id or alias: default sampling, system prompt, chat template",
    )


def load_modelserver_config(path: Path) -> ModelServerConfig:
    """Reads, expands and validates a model server config file (raises ConfigError)."""
    return load_config(path, ModelServerConfig)
