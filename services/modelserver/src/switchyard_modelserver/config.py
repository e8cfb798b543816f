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

from switchyard.configfile import load_config


class BackendSection(BaseModel):
    """``backend:``: the kind, plus that backend's own options."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


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


def load_modelserver_config(path: Path) -> ModelServerConfig:
    """Reads, expands and validates a model server config file (raises ConfigError)."""
    return load_config(path, ModelServerConfig)
