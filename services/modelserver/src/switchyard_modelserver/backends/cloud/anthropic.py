"""The `anthropic` backend: Claude models through the official SDK's Messages API.

System messages are split out into ``system``; every request streams
(message_start … message_stop), so Generate and StreamGenerate see the same
events. The Messages API requires max_tokens: a request without one gets the
model's ``default_max_tokens``, else the backend's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import anthropic
from pydantic import Field

from switchyard_common.status import StatusError
from switchyard_modelserver.backends.cloud import errors, transport
from switchyard_modelserver.backends.cloud.backend import CloudBackend, max_tokens_for
from switchyard_modelserver.backends.cloud.options import CloudModel, CloudOptions
from switchyard_modelserver.domain import (
    Capability,
    ChatTurn,
    Delta,
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    ToolCallDelta,
    ToolChoiceMode,
)

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP_SEQUENCE,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "pause_turn": FinishReason.STOP,
    "refusal": FinishReason.CONTENT_FILTER,
}


class AnthropicOptions(CloudOptions):
    """Options of the anthropic backend."""

    default_max_tokens: int = Field(
        default=1024, ge=1, description="max_tokens when neither the request nor the model sets one"
    )


class AnthropicBackend(CloudBackend):
    """Serves Claude models."""

    kind = "anthropic"
    provider = "anthropic"
    options_model = AnthropicOptions
    requires_api_key = True
    provider_capabilities = frozenset({Capability.COUNT_TOKENS})  # /v1/messages/count_tokens

    def __init__(self, options: AnthropicOptions) -> None:
        super().__init__(options)
        self._default_max_tokens = options.default_max_tokens
        self._client = anthropic.AsyncAnthropic(
            api_key=self.secret.reveal(),
            base_url=options.base_url,
            max_retries=options.max_retries,
            http_client=transport.http_client(options, self.provider),
            # Our transport makes the HTTP span; the SDK's own would repeat it.
            open_telemetry=False,
        )

    def send_key(self, key: str | None) -> None:
        self._client.api_key = key

    def holds_strict_tools(self) -> bool:
        return True  # tools[].strict

    async def list_provider_models(self) -> set[str] | None:
        return await self.sdk_model_ids(self._client)

    def status_of(
        self, error: Exception, model: CloudModel, request: GenerationRequest | None
    ) -> StatusError | None:
        if isinstance(error, anthropic.APITimeoutError):
            return errors.timeout_error(self.provider, model)
        if isinstance(error, anthropic.APIStatusError):
            error_type, message = _error_of(error.body)
            status = error.status_code
            if status < 400:  # an error event inside the stream
                event_status = errors.error_event_status(error_type)
                if event_status is None:
                    return errors.broken_stream_error(self.provider, model, message or error_type)
                status = event_status
            return errors.http_status_error(
                provider=self.provider,
                status=status,
                message=message or str(error.message),
                model=model,
                headers=error.response.headers,
                request=request,
                error_type=error_type,
            )
        if isinstance(error, anthropic.APIConnectionError):
            return errors.sdk_connection_error(self.provider, model, error)
        if isinstance(error, ValueError):  # an event that is not JSON
            return errors.broken_stream_error(self.provider, model, "malformed event")
        return errors.transport_error(self.provider, model, error)

    def _arguments(self, model: CloudModel, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        for name in ("seed", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            if getattr(sampling, name) is not None:
                raise errors.unsupported(f"sampling.{name}", self.kind)
        if sampling.logprobs is not None:
            raise errors.unsupported("sampling.logprobs", self.kind)
        arguments: dict[str, Any] = {
            **_input(model, request),
            "max_tokens": max_tokens_for(model, request) or self._default_max_tokens,
            "stream": True,
            "timeout": transport.request_timeout(self.options, request),
        }
        if request.continuation.text.rstrip():
            # Prefill: the reply continues from the text already delivered (the
            # API refuses a prefill that ends in whitespace; stream() drops it
            # from the reply's start instead).
            prefill = {"role": "assistant", "content": request.continuation.text.rstrip()}
            arguments["messages"] = [*arguments["messages"], prefill]
        response = request.response_format
        if isinstance(response, JsonSchemaFormat | JsonObjectFormat):
            schema = (
                response.schema if isinstance(response, JsonSchemaFormat) else {"type": "object"}
            )
            # Anthropic's structured outputs: constrained to the schema.
            arguments["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if sampling.stop:
            arguments["stop_sequences"] = list(sampling.stop)
        extra = {
            name: getattr(sampling, name)
            for name in ("temperature", "top_p", "top_k")
            if getattr(sampling, name) is not None
        }
        if extra:
            arguments["extra_body"] = extra
        return arguments

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Anthropic's count-tokens API, with the same system, messages, tools and tool
        choice a generation would send."""
        model = self._models[request.model]
        try:
            counted = await self._client.messages.count_tokens(
                **_input(model, request), timeout=transport.request_timeout(self.options, request)
            )
        except Exception as error:
            status = self.status_of(error, model, request)
            if status is None:
                raise
            raise self._failed(model, status) from None
        return int(counted.input_tokens)

    async def stream(
        self, model: CloudModel, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        arguments = self._arguments(model, request)
        stream: Any = await self._client.messages.create(**arguments)
        finish: FinishReason | None = None
        stop_sequence = ""
        prompt_tokens = completion_tokens = 0
        ended = False
        delivered = request.continuation.text
        # Whitespace that was delivered but not prefilled comes back first: skip it.
        skip = delivered[len(delivered.rstrip()) :] if delivered.rstrip() else ""
        calls: dict[int, int] = {}  # content block index -> tool call index
        empty: set[int] = set()  # tool calls whose input has not started yet
        try:
            async for event in stream:
                kind = event.type
                if kind == "message_start":
                    usage = event.message.usage
                    prompt_tokens = usage.input_tokens or 0
                    completion_tokens = usage.output_tokens or 0
                elif kind == "content_block_start" and event.content_block.type == "tool_use":
                    block = event.content_block
                    calls[event.index] = index = len(calls)
                    empty.add(index)
                    yield Delta("", 1, tool_calls=[ToolCallDelta(index, block.id, block.name)])
                elif kind == "content_block_delta" and event.delta.type == "input_json_delta":
                    index = calls[event.index]
                    if event.delta.partial_json:
                        empty.discard(index)
                        piece = ToolCallDelta(index, arguments=event.delta.partial_json)
                        yield Delta("", 1, tool_calls=[piece])
                elif kind == "content_block_stop" and calls.get(event.index) in empty:
                    # A call without arguments streams no input at all: it is "{}".
                    index = calls[event.index]
                    empty.discard(index)
                    yield Delta("", 0, tool_calls=[ToolCallDelta(index, arguments="{}")])
                elif kind == "content_block_delta":
                    text = getattr(event.delta, "text", None) or ""
                    if skip and text:
                        same = _common_prefix_length(text, skip)
                        text, skip = text[same:], (skip[same:] if same else "")
                    if text:
                        yield Delta(text, 1)
                elif kind == "message_delta":
                    reason = event.delta.stop_reason
                    if reason:
                        finish = _FINISH.get(reason, FinishReason.STOP)
                    stop_sequence = event.delta.stop_sequence or ""
                    if event.usage is not None and event.usage.output_tokens is not None:
                        completion_tokens = event.usage.output_tokens
                elif kind == "message_stop":
                    ended = True
        finally:
            await stream.close()  # also when the caller went away: the HTTP stream ends
        if not ended or finish is None:
            raise errors.broken_stream_error(self.provider, model, "ended before message_stop")
        yield Finish(finish, prompt_tokens, completion_tokens, stop_sequence)

    async def close(self) -> None:
        await super().close()
        await self._client.close()


def _common_prefix_length(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _error_of(body: object) -> tuple[str, str]:
    """(error type, message) from an Anthropic error body."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("type") or ""), str(inner.get("message") or "")
    return "", ""


def _input(model: CloudModel, request: GenerationRequest) -> dict[str, Any]:
    """What a generation and a token count both send: the model, the system prompt,
    the messages (tool calls as tool_use blocks, results as tool_result blocks), the
    tools and the tool choice."""
    system = []
    messages: list[dict[str, Any]] = []
    if request.messages is None:
        assert request.prompt is not None
        messages.append({"role": "user", "content": request.prompt})
    else:
        for turn in request.messages:
            if turn.role == "system":
                system.append(turn.content)
            elif turn.role == "tool":
                result = {
                    "type": "tool_result",
                    "tool_use_id": turn.tool_call_id,
                    "content": turn.content,
                }
                previous = messages[-1] if messages else None
                if previous is not None and previous.get("_tool_results"):
                    previous["content"].append(result)  # all results in one user turn
                else:
                    messages.append({"role": "user", "content": [result], "_tool_results": True})
            else:
                messages.append(_message(turn))
    for message in messages:
        message.pop("_tool_results", None)
    given: dict[str, Any] = {"model": model.upstream, "messages": messages}
    if system:
        given["system"] = "\n\n".join(system)
    if request.tools:
        # Also sent to count-tokens: a strict tool's definition is part of the input.
        given["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            | ({"strict": True} if t.strict else {})
            for t in request.tools
        ]
        given["tool_choice"] = _tool_choice(request)
    return given


def _message(turn: ChatTurn) -> dict[str, Any]:
    if not turn.tool_calls:
        return {"role": turn.role, "content": turn.content}
    blocks: list[dict[str, Any]] = [{"type": "text", "text": turn.content}] if turn.content else []
    blocks += [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments)}
        for call in turn.tool_calls
    ]
    return {"role": turn.role, "content": blocks}


def _tool_choice(request: GenerationRequest) -> dict[str, Any]:
    choice = request.tool_choice
    mode: dict[str, Any] = {
        ToolChoiceMode.AUTO: {"type": "auto"},
        ToolChoiceMode.NONE: {"type": "none"},
        ToolChoiceMode.REQUIRED: {"type": "any"},
        ToolChoiceMode.NAMED: {"type": "tool", "name": choice.name},
    }[choice.mode]
    if not request.parallel_tool_calls and choice.mode is not ToolChoiceMode.NONE:
        mode["disable_parallel_tool_use"] = True
    return mode
