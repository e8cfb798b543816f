"""Options every cloud backend has, and the models it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from switchyard_modelserver.backends.base import BackendOptions

CapabilityName = Literal["completion", "chat", "streaming", "logprobs", "tools", "json_output"]


def _chat_and_streaming() -> list[CapabilityName]:
    """What a chat model of every provider does today (tools: function calling;
    json_output: response_format JSON object and JSON Schema)."""
    return ["chat", "streaming", "tools", "json_output"]


class CloudModel(BackendOptions):
    """One model a cloud backend serves."""

    id: str = Field(description="the model id clients use")
    provider_model: str | None = Field(
        default=None, description="the provider's model id (default: id)"
    )
    aliases: list[str] = Field(default_factory=list)
    context_length: int = Field(default=8192, ge=16)
    capabilities: list[CapabilityName] = Field(default_factory=_chat_and_streaming)
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="max_tokens sent when a request sets none"
    )
    concurrency: int = Field(default=64, ge=1, description="requests in flight (the rest queue)")

    @property
    def upstream(self) -> str:
        return self.provider_model or self.id


class CloudOptions(BackendOptions):
    """Options every cloud backend has."""

    base_url: str | None = Field(default=None, description="the provider's API address")
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_key_file: Path | None = Field(default=None, description="file with the key (a mount)")
    models: list[CloudModel] = Field(min_length=1)
    timeout_seconds: float = Field(
        default=600.0, gt=0, description="HTTP timeout when the caller sets no shorter deadline"
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    max_retries: int = Field(
        default=0,
        ge=0,
        le=5,
        description="the SDK's own retries; 0 leaves retrying to the router, which goes elsewhere",
    )
    startup_check: bool = Field(
        default=True,
        description="list the provider's models at start (checks address and credentials); "
        "costs one free request",
    )
    unhealthy_after_failures: int = Field(
        default=3, ge=1, description="consecutive provider failures that make a model NOT_SERVING"
    )
    probe_interval_seconds: float = Field(
        default=10.0, gt=0, description="how often an unhealthy model's provider is probed"
    )

    @model_validator(mode="after")
    def _check(self) -> CloudOptions:
        names = [m.id for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("model ids must be unique")
        if self.api_key_env and self.api_key_file:
            raise ValueError("set api_key_env or api_key_file, not both")
        return self
