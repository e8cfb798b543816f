"""Request parsing: protobuf in, domain request out, or INVALID_ARGUMENT naming every bad field.

The request's shape and the input limits (``limits:`` in the config: prompt
length, number of messages, stop sequences) are checked here: the model server
parses every request anyway, the router does not. Checks that need the model
(max_tokens ceilings, context length, token counts) are in ``limits``, on
domain types, for the servicer and the backends that count tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, TypeVar

from google.protobuf.message import DecodeError, Message

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.config import InputLimits
from switchyard_modelserver.domain import (
    ChatTurn,
    Continuation,
    GenerationRequest,
    Sampling,
    ToolChoice,
    ToolSpec,
)
from switchyard_modelserver.models.adapters import ADAPTER_NAME
from switchyard_modelserver.serving import tool_request
from switchyard_modelserver.serving.limits import MAX_LOGPROBS

_Message = TypeVar("_Message", bound=Message)

DEFAULT_LIMITS = InputLimits()
CHAT_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class UnreadableRequest:
    """Stands in for a request whose bytes did not parse (e.g. a string that is not UTF-8)."""

    message_type: str
    error: str
    too_large: bool = False


def lenient_parser(
    message_type: type[_Message], max_bytes: int | None = None
) -> Callable[[bytes], _Message | UnreadableRequest]:
    """A gRPC request deserializer that hands bad bytes to the servicer instead of
    failing inside grpcio (which would answer UNKNOWN), so they get INVALID_ARGUMENT.
    Requests over ``max_bytes`` are refused unparsed."""

    def parse(data: bytes) -> _Message | UnreadableRequest:
        if max_bytes is not None and len(data) > max_bytes:
            return UnreadableRequest(
                message_type.DESCRIPTOR.full_name,
                f"is {len(data)} bytes; at most {max_bytes}",
                too_large=True,
            )
        try:
            return message_type.FromString(data)
        except DecodeError as error:
            return UnreadableRequest(message_type.DESCRIPTOR.full_name, str(error))

    return parse


def unreadable(request: UnreadableRequest) -> StatusError:
    """INVALID_ARGUMENT (field ``request``) for bytes that did not parse or were too large."""
    if request.too_large:
        return invalid_argument(FieldViolation("request", request.error))
    return invalid_argument(
        FieldViolation(
            "request",
            f"not a valid {request.message_type} (strings must be UTF-8): {request.error}",
        )
    )


def generation_request(
    request: pb.GenerateRequest | pb.StreamGenerateRequest | UnreadableRequest,
    limits: InputLimits = DEFAULT_LIMITS,
) -> GenerationRequest:
    """Validates a Generate or StreamGenerate request; raises StatusError on bad input."""
    if isinstance(request, UnreadableRequest):
        raise unreadable(request)
    violations: list[FieldViolation] = []
    has_prompt, has_messages = _input(request, violations, limits)
    sampling = _sampling(request.sampling, violations, limits)
    if len(request.continuation.text) > limits.max_prompt_chars:
        # Input like the prompt (a resume sends the text already generated).
        violations.append(
            FieldViolation(
                "continuation.text",
                f"is {len(request.continuation.text)} characters; "
                f"at most {limits.max_prompt_chars}",
            )
        )
    if any(t < 0 for t in request.continuation.token_ids):
        violations.append(FieldViolation("continuation.token_ids", "must be >= 0"))
    if request.adapter and not ADAPTER_NAME.fullmatch(request.adapter):
        violations.append(
            FieldViolation(
                "adapter",
                "must be an adapter name (1 to 128 letters, digits, '.', '_' or '-'; "
                f"got {_clip(request.adapter)!r})",
            )
        )
    conversation = _conversation(request, has_prompt, has_messages, violations, limits)
    response_format = tool_request.response_format(request, violations)
    if violations:
        raise invalid_argument(*violations)
    return GenerationRequest(
        **conversation,
        sampling=sampling,
        continuation=Continuation(
            text=request.continuation.text, token_ids=tuple(request.continuation.token_ids)
        ),
        include_token_ids=request.include_token_ids,
        adapter=request.adapter or None,
        parallel_tool_calls=(
            request.parallel_tool_calls if request.HasField("parallel_tool_calls") else True
        ),
        response_format=response_format,
    )


def count_request(
    request: pb.CountTokensRequest | UnreadableRequest, limits: InputLimits = DEFAULT_LIMITS
) -> GenerationRequest:
    """Validates a CountTokens request: the input fields of a Generate request."""
    if isinstance(request, UnreadableRequest):
        raise unreadable(request)
    violations: list[FieldViolation] = []
    has_prompt, has_messages = _input(request, violations, limits)
    conversation = _conversation(request, has_prompt, has_messages, violations, limits)
    if violations:
        raise invalid_argument(*violations)
    return GenerationRequest(**conversation, sampling=Sampling())


class _Conversation(TypedDict):
    model: str
    prompt: str | None
    messages: tuple[ChatTurn, ...] | None
    tools: tuple[ToolSpec, ...]
    tool_choice: ToolChoice


def _conversation(
    request: pb.GenerateRequest | pb.StreamGenerateRequest | pb.CountTokensRequest,
    has_prompt: bool,
    has_messages: bool,
    violations: list[FieldViolation],
    limits: InputLimits,
) -> _Conversation:
    """The model and what it is asked, tools included: read alike for Generate and
    CountTokens, so that a count is of the very prompt a generation would get."""
    tools = tool_request.tools(request.tools, has_prompt, violations)
    tool_choice = tool_request.tool_choice(request, tools, violations)
    turns = tool_request.chat_turns(request.messages[: limits.max_messages], tools, violations)
    return _Conversation(
        model=request.model,
        prompt=request.prompt if has_prompt else None,
        messages=turns if has_messages else None,
        tools=tools,
        tool_choice=tool_choice,
    )


def _input(
    request: pb.GenerateRequest | pb.StreamGenerateRequest | pb.CountTokensRequest,
    violations: list[FieldViolation],
    limits: InputLimits,
) -> tuple[bool, bool]:
    """Checks the model, the prompt or messages and their size; returns (has prompt,
    has messages)."""
    if not request.model:
        violations.append(FieldViolation("model", "is required (see ListModels for the ids)"))
    has_prompt = bool(request.prompt)
    has_messages = len(request.messages) > 0
    if has_prompt and has_messages:
        violations.append(
            FieldViolation("prompt", "set either prompt or messages, not both"),
        )
        violations.append(FieldViolation("messages", "set either prompt or messages, not both"))
    elif not has_prompt and not has_messages:
        violations.append(
            FieldViolation("prompt", "one of prompt or messages is required and must not be empty")
        )
    if len(request.messages) > limits.max_messages:
        violations.append(
            FieldViolation(
                "messages",
                f"at most {limits.max_messages} messages (got {len(request.messages)})",
            )
        )
    prompt_chars = (
        len(request.prompt)
        + sum(
            len(m.content) + sum(len(c.arguments) for c in m.tool_calls) for m in request.messages
        )
        + sum(len(t.description) + len(t.parameters) for t in request.tools)
    )
    if prompt_chars > limits.max_prompt_chars:
        violations.append(
            FieldViolation(
                "messages" if has_messages else "prompt",
                f"is {prompt_chars} characters; at most {limits.max_prompt_chars}",
            )
        )
    for index, message in enumerate(request.messages[: limits.max_messages]):
        if message.role not in CHAT_ROLES:
            violations.append(
                FieldViolation(
                    f"messages[{index}].role",
                    f"must be one of {', '.join(CHAT_ROLES)} (got {_clip(message.role)!r})",
                )
            )
    return has_prompt, has_messages


def _clip(text: str, length: int = 32) -> str:
    """User text quoted in an error, cut short (an error is no place for a prompt)."""
    return text if len(text) <= length else text[:length] + "..."


def _sampling(
    params: pb.SamplingParams, violations: list[FieldViolation], limits: InputLimits
) -> Sampling:
    def check(name: str, ok: bool, description: str) -> None:
        if not ok:
            violations.append(FieldViolation(f"sampling.{name}", description))

    def finite(name: str) -> bool:
        value = getattr(params, name)
        if not math.isfinite(value):
            check(name, False, "must be a finite number")
            return False
        return True

    has = params.HasField
    if has("temperature") and finite("temperature"):
        check("temperature", params.temperature >= 0, f"must be >= 0 (got {params.temperature:g})")
    if has("top_p") and finite("top_p"):
        check("top_p", 0 < params.top_p <= 1, f"must be in (0, 1] (got {params.top_p:g})")
    if has("top_k"):
        check("top_k", params.top_k >= 0, f"must be >= 0 (got {params.top_k})")
    if has("max_tokens"):
        check("max_tokens", params.max_tokens >= 1, f"must be >= 1 (got {params.max_tokens})")
    check(
        "stop",
        len(params.stop) <= limits.max_stop_sequences,
        f"at most {limits.max_stop_sequences} stop sequences (got {len(params.stop)})",
    )
    for index, stop in enumerate(params.stop[: limits.max_stop_sequences]):
        if not stop:
            check(f"stop[{index}]", False, "must not be empty")
        elif len(stop) > limits.max_stop_sequence_chars:
            check(f"stop[{index}]", False, f"at most {limits.max_stop_sequence_chars} characters")
    if has("seed"):
        check("seed", params.seed >= 0, f"must be >= 0 (got {params.seed})")
    for name in ("presence_penalty", "frequency_penalty"):
        if has(name) and finite(name):
            value = getattr(params, name)
            check(name, -2 <= value <= 2, f"must be in [-2, 2] (got {value:g})")
    if has("repetition_penalty") and finite("repetition_penalty"):
        check(
            "repetition_penalty",
            params.repetition_penalty > 0,
            f"must be > 0 (got {params.repetition_penalty:g})",
        )
    if has("logprobs"):
        check(
            "logprobs",
            0 <= params.logprobs <= MAX_LOGPROBS,
            f"must be in [0, {MAX_LOGPROBS}] (got {params.logprobs})",
        )

    def real(name: str) -> float | None:
        return float(getattr(params, name)) if has(name) else None

    def whole(name: str) -> int | None:
        return int(getattr(params, name)) if has(name) else None

    return Sampling(
        temperature=real("temperature"),
        top_p=real("top_p"),
        top_k=whole("top_k"),
        max_tokens=whole("max_tokens"),
        stop=tuple(params.stop),
        seed=whole("seed"),
        presence_penalty=real("presence_penalty"),
        frequency_penalty=real("frequency_penalty"),
        repetition_penalty=real("repetition_penalty"),
        logprobs=whole("logprobs"),
    )
