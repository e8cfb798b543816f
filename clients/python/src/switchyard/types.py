"""Typed results of the SDK, decoupled from the generated protobuf classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from switchyard.v1 import llm_service_pb2 as pb


class FinishReason(enum.StrEnum):
    """Why a generation ended."""

    UNSPECIFIED = "unspecified"
    UNKNOWN = "unknown"
    """A reason this SDK version does not know (the server is newer)."""
    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    ERROR = "error"
    CONTENT_FILTER = "content_filter"

    @classmethod
    def from_proto(cls, value: int) -> FinishReason:
        try:
            name = pb.FinishReason.Name(value).removeprefix("FINISH_REASON_")
        except ValueError:  # the contract only grows: newer servers may send new values
            return cls.UNKNOWN
        return cls(name.lower())


@dataclass(frozen=True)
class Usage:
    """Tokens consumed by the prompt and produced by the model."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those the engine found in its prefix cache (0: none, or
    the engine does not say)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Server-side timings in seconds."""

    time_to_first_token: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class Completion:
    """A finished generation."""

    text: str
    finish_reason: FinishReason
    usage: Usage
    model: str
    backend: str
    timings: Timings
    stop_sequence: str = ""


@dataclass(frozen=True)
class StreamChunk:
    """One streamed delta; the last one has ``finish_reason`` set and carries usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    model: str = ""
    backend: str = ""
    timings: Timings | None = None
    stop_sequence: str = ""
    resumes: int = 0
    """How often the router resumed this stream elsewhere after a model server failed."""


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass(frozen=True)
class ModelInfo:
    """A model a server offers, with its live status."""

    id: str
    backend: str
    status: str
    context_length: int
    aliases: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    healthy_replicas: int = 0
    total_replicas: int = 0

    @property
    def ready(self) -> bool:
        return self.status == "ready"
