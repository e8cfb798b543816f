"""Translation between the SDK's Python types and the generated protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from google.protobuf import duration_pb2

from switchyard.response_format import ResponseFormatLike, response_format_message
from switchyard.tools import Tool, ToolLike, tool_choice_message, tool_messages
from switchyard.types import (
    AdapterInfo,
    Completion,
    FinishReason,
    Message,
    ModelDefaults,
    ModelInfo,
    StreamChunk,
    Timings,
    TokenCount,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from switchyard.v1 import llm_service_pb2 as pb

MessageLike = Message | Mapping[str, Any]


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
    adapter: str
    """Not a sampling option: the model's LoRA adapter to apply (see ``ModelInfo.adapters``)."""


class GenerationOptions(SamplingOptions, total=False):
    """Keyword arguments of chat and stream calls: sampling, plus tools and the output's
    shape (see ``switchyard.tools`` and ``switchyard.response_format``)."""

    tools: Sequence[ToolLike]
    tool_choice: str | Tool
    parallel_tool_calls: bool
    response_format: ResponseFormatLike


_NOT_SAMPLING = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "response_format", "adapter"}
)


def apply_options(request: pb.GenerateRequest, options: GenerationOptions) -> None:
    """Sets the request's sampling, adapter, tools, tool choice and response format."""
    request.sampling.CopyFrom(sampling_params(options))
    request.adapter = options.get("adapter") or ""
    tools = options.get("tools")
    if tools:
        request.tools.extend(tool_messages(tools))
    choice = options.get("tool_choice")
    if choice is not None:
        request.tool_choice.CopyFrom(tool_choice_message(choice))
    parallel = options.get("parallel_tool_calls")
    if parallel is not None:
        request.parallel_tool_calls = parallel
    response_format = options.get("response_format")
    if response_format is not None:
        request.response_format.CopyFrom(response_format_message(response_format))


def sampling_params(options: SamplingOptions) -> pb.SamplingParams:
    params = pb.SamplingParams()
    for name, value in options.items():
        if value is None or name in _NOT_SAMPLING:
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
            role, content = message.role, message.content
            calls: Sequence[Any] = message.tool_calls
            call_id = message.tool_call_id
        else:
            role, content = message["role"], message.get("content") or ""
            calls = message.get("tool_calls") or ()
            call_id = message.get("tool_call_id") or ""
        converted.append(
            pb.ChatMessage(
                role=role,
                content=content,
                tool_calls=[_tool_call_message(call) for call in calls],
                tool_call_id=call_id,
            )
        )
    return converted


def _tool_call_message(call: ToolCall | Mapping[str, Any]) -> pb.ToolCall:
    """A call made earlier, as the SDK returned it or in OpenAI's dict shape."""
    if isinstance(call, ToolCall):
        return pb.ToolCall(id=call.id, name=call.name, arguments=call.arguments)
    function = call.get("function", call)
    arguments = function.get("arguments") or ""
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return pb.ToolCall(
        id=call.get("id") or "", name=function.get("name") or "", arguments=arguments
    )


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
    calls = [ToolCall(c.id, c.name, c.arguments) for c in response.tool_calls]
    return Completion(text=response.text, tool_calls=calls, **_ending(response))


def stream_chunk(response: pb.StreamGenerateResponse) -> StreamChunk:
    calls = [ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in response.tool_calls]
    if response.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return StreamChunk(text=response.text, tool_calls=calls)
    return StreamChunk(
        text=response.text, resumes=response.resumes, tool_calls=calls, **_ending(response)
    )


def token_count(response: pb.CountTokensResponse) -> TokenCount:
    return TokenCount(
        prompt_tokens=response.prompt_tokens,
        model=response.model,
        backend=response.backend,
        context_length=response.context_length,
    )


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
        memory_bytes=model.memory_bytes,
        adapters=[AdapterInfo(a.name, a.loaded) for a in model.adapters],
        defaults=_defaults(model.defaults) if model.HasField("defaults") else None,
    )


def _defaults(defaults: pb.ModelDefaults) -> ModelDefaults:
    sampling: dict[str, Any] = {
        name: getattr(defaults.sampling, name)
        for name in ("temperature", "top_p", "max_tokens")
        if defaults.sampling.HasField(name)
    }
    if defaults.sampling.stop:
        sampling["stop"] = list(defaults.sampling.stop)
    return ModelDefaults(
        sampling=sampling,
        system_prompt=defaults.system_prompt,
        chat_template_override=defaults.chat_template_override,
    )
