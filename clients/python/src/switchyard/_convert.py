"""Translation between the SDK's Python types and the generated protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from google.protobuf import duration_pb2

from switchyard.types import (
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    StreamChunk,
    Timings,
    Usage,
)
from switchyard.v1 import llm_service_pb2 as pb

MessageLike = Message | Mapping[str, str]


class SamplingOptions(TypedDict, total=False):
    """Keyword arguments accepted by generate/chat/stream (all optional)."""

    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: Sequence[str]
    seed: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float


def sampling_params(options: SamplingOptions) -> pb.SamplingParams:
    params = pb.SamplingParams()
    for name, value in options.items():
        if value is None:
            continue
        if name == "stop":
            stops: str | Sequence[str] = value  # type: ignore[assignment]
            params.stop.extend([stops] if isinstance(stops, str) else stops)
        else:
            setattr(params, name, value)
    return params


def chat_messages(messages: Sequence[MessageLike]) -> list[pb.ChatMessage]:
    converted = []
    for message in messages:
        if isinstance(message, Message):
            converted.append(pb.ChatMessage(role=message.role, content=message.content))
        else:
            converted.append(pb.ChatMessage(role=message["role"], content=message["content"]))
    return converted


def _seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def _timings(message: pb.Timings) -> Timings:
    return Timings(
        time_to_first_token=_seconds(message.time_to_first_token), total=_seconds(message.total)
    )


def _usage(message: pb.Usage) -> Usage:
    return Usage(
        prompt_tokens=message.prompt_tokens,
        completion_tokens=message.completion_tokens,
        cached_prompt_tokens=message.cached_prompt_tokens,
    )


class _Ending(TypedDict):
    """What a finished generation carries, unary or at the end of a stream."""

    finish_reason: FinishReason
    usage: Usage
    model: str
    backend: str
    timings: Timings
    stop_sequence: str


def _ending(response: pb.GenerateResponse | pb.StreamGenerateResponse) -> _Ending:
    return _Ending(
        finish_reason=FinishReason.from_proto(response.finish_reason),
        usage=_usage(response.usage),
        model=response.model,
        backend=response.backend,
        timings=_timings(response.timings),
        stop_sequence=response.stop_sequence,
    )


def completion(response: pb.GenerateResponse) -> Completion:
    return Completion(text=response.text, **_ending(response))


def stream_chunk(response: pb.StreamGenerateResponse) -> StreamChunk:
    if response.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return StreamChunk(text=response.text)
    return StreamChunk(text=response.text, resumes=response.resumes, **_ending(response))


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """An enum value's short lower-case name; "unknown" for values newer than this SDK."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return "unknown"


def model_info(model: pb.Model) -> ModelInfo:
    return ModelInfo(
        id=model.id,
        backend=model.backend,
        status=_enum_name(pb.ModelStatus, model.status, "MODEL_STATUS_"),
        context_length=model.context_length,
        aliases=list(model.aliases),
        capabilities=[_enum_name(pb.Capability, c, "CAPABILITY_") for c in model.capabilities],
        healthy_replicas=model.healthy_replicas,
        total_replicas=model.total_replicas,
    )
