"""Typed results of the SDK, decoupled from the generated protobuf classes."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
    TOOL_CALLS = "tool_calls"
    """The model called tools (``Completion.tool_calls``); send their results back."""

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
class ToolCall:
    """A call of one of the request's tools by the model."""

    id: str
    name: str
    arguments: str
    """The arguments as JSON object text."""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as a dict (raises ``ValueError`` if they are not a JSON object)."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError(f"arguments of {self.name} are not a JSON object")
        return value


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call in a stream: the first piece of a call has its ``id`` and
    ``name``, later ones (same ``index``) fragments of its ``arguments``."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


def join_tool_calls(pieces: Iterable[ToolCallDelta]) -> list[ToolCall]:
    """Whole tool calls from the pieces a stream sent (``StreamChunk.tool_calls``)."""
    calls: dict[int, dict[str, str]] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        call["id"] = piece.id or call["id"]
        call["name"] = piece.name or call["name"]
        call["arguments"] += piece.arguments
    return [ToolCall(**calls[index]) for index in sorted(calls)]


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
    tool_calls: list[ToolCall] = field(default_factory=list)
    """The tools the model called (finish_reason ``TOOL_CALLS``)."""

    @property
    def message(self) -> Message:
        """The answer as an assistant message, to append to the conversation."""
        return Message("assistant", self.text, tool_calls=tuple(self.tool_calls))

    def json(self) -> Any:
        """The text parsed as JSON (for a ``response_format`` asking for JSON)."""
        return json.loads(self.text)


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
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    """Pieces of tool calls (see :func:`join_tool_calls`)."""


@dataclass(frozen=True)
class Message:
    """One chat turn: ``system``, ``user``, ``assistant`` (which may carry the tool calls
    it made) or ``tool`` (the result of one call, by its id)."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""

    @classmethod
    def tool_result(cls, call: ToolCall | str, content: str | Any) -> Message:
        """The ``tool`` message answering ``call`` (or a call id); a non-string result
        is sent as JSON."""
        call_id = call if isinstance(call, str) else call.id
        text = content if isinstance(content, str) else json.dumps(content)
        return cls("tool", text, tool_call_id=call_id)


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter of a model: its name (for ``adapter=``) and whether it is in memory."""

    name: str
    loaded: bool


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
    memory_bytes: int = 0
    """What it takes in memory when loaded (0: unknown)."""
    adapters: list[AdapterInfo] = field(default_factory=list)
    defaults: ModelDefaults | None = None
    """The model's defaults from the model server's config (None: none configured)."""

    @property
    def ready(self) -> bool:
        return self.status == "ready"


@dataclass(frozen=True)
class ModelDefaults:
    """What a model server uses where a request leaves something unset."""

    sampling: dict[str, Any] = field(default_factory=dict)
    """temperature, top_p, max_tokens and stop, where configured."""
    system_prompt: str = ""
    chat_template_override: bool = False


@dataclass(frozen=True)
class TokenCount:
    """The tokens a request's input takes, counted by the model's own tokenizer."""

    prompt_tokens: int
    model: str
    backend: str
    context_length: int

    @property
    def remaining(self) -> int:
        """Tokens left in the context for the answer."""
        return max(0, self.context_length - self.prompt_tokens)
