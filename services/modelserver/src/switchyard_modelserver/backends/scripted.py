"""The `scripted` backend: deterministic replies with injectable latency and faults.

For load tests, chaos tests and users' own CI; never a default. Each model
either echoes its input or replies with canned text, one word per token, with
an optional delay per token and an optional failure after N tokens.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from typing import Any, Literal

import grpc
from pydantic import Field, model_validator

from switchyard_common.status import StatusError
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.domain import (
    BackendEvent,
    Capability,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelCard,
    ModelState,
    PromptCounted,
    ToolCallDelta,
    ToolChoiceMode,
)
from switchyard_modelserver.serving.stops import StopMatcher
from switchyard_modelserver.tools.hermes import new_call_id

_TOKEN = re.compile(r"\s*\S+|\s+")

FailureCode = Literal["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED"]


class ScriptedToolCall(BackendOptions):
    """The call a scripted model makes when a request offers this tool."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedModel(BackendOptions):
    """One scripted model."""

    id: str
    aliases: list[str] = Field(default_factory=list)
    reply: str | None = Field(default=None, description="canned reply; unset echoes the input")
    repeat: int = Field(default=1, ge=1, description="repeat the reply this many times")
    token_delay_ms: float = Field(default=0.0, ge=0)
    first_token_delay_ms: float = Field(default=0.0, ge=0)
    fail_after_tokens: int | None = Field(default=None, ge=0)
    fail_code: FailureCode = "UNAVAILABLE"
    context_length: int = Field(default=4096, ge=16)
    concurrency: int = Field(default=64, ge=1)
    load_delay_ms: float = Field(default=0.0, ge=0)
    tool_call: ScriptedToolCall | None = Field(
        default=None,
        description="call this tool when a request offers it (and the last message is not "
        "a tool result); the model then has the tools capability",
    )


class ScriptedOptions(BackendOptions):
    """Options of the scripted backend."""

    models: list[ScriptedModel] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> ScriptedOptions:
        ids = [m.id for m in self.models]
        if len(ids) != len(set(ids)):
            raise ValueError("model ids must be unique")
        return self


def _fail_if_due(script: ScriptedModel, generated: int) -> None:
    """Raises the script's injected failure once it has produced enough tokens."""
    if script.fail_after_tokens is not None and generated >= script.fail_after_tokens:
        raise StatusError(
            getattr(grpc.StatusCode, script.fail_code),
            f"scripted failure after {generated} tokens",
            reason="SCRIPTED_FAILURE",
        )


def tokens_of(text: str) -> list[str]:
    """Splits text into the scripted backend's tokens (words with their leading space)."""
    return _TOKEN.findall(text)


class ScriptedBackend(Backend):
    """Replies from a script instead of a model."""

    kind = "scripted"
    options_model = ScriptedOptions

    def __init__(self, options: ScriptedOptions) -> None:
        self._models = {m.id: m for m in options.models}

    def models(self) -> list[ModelCard]:
        return [
            ModelCard(
                id=m.id,
                aliases=tuple(m.aliases),
                context_length=m.context_length,
                capabilities=frozenset(
                    {
                        Capability.COMPLETION,
                        Capability.CHAT,
                        Capability.STREAMING,
                        Capability.COUNT_TOKENS,
                        *(
                            [Capability.TOOLS, Capability.STRICT_TOOLS]
                            if m.tool_call is not None
                            else []
                        ),
                    }
                ),
            )
            for m in self._models.values()
        ]

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len(tokens_of(_source(request)))

    async def load(self, report: StateReporter) -> None:
        for card in self.models():
            delay = self._models[card.id].load_delay_ms
            if delay:
                await asyncio.sleep(delay / 1000)
            report(card, ModelState.READY, "")

    def concurrency(self, model_id: str) -> int:
        return self._models[model_id].concurrency

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        script = self._models[request.model]
        source = _source(request)
        prompt_tokens = len(tokens_of(source))
        yield PromptCounted(prompt_tokens)
        call = _tool_call(script, request)
        if call is not None:
            async for event in _call_tool(script, call, prompt_tokens):
                yield event
            return
        reply = source if script.reply is None else script.reply * script.repeat
        max_tokens = request.sampling.max_tokens or script.context_length - prompt_tokens
        stops = StopMatcher(request.sampling.stop)
        # Token ids are positions in the reply; a continuation skips what it covers.
        continuation = request.continuation
        reply_tokens = tokens_of(reply)
        skip = len(continuation.token_ids) or len(tokens_of(continuation.text))
        generated = skip
        # Text the interrupted server held back (a possible stop sequence) was
        # never delivered: replay it through the stop matcher, as llamacpp does.
        replayed = "".join(reply_tokens[:skip])
        if replayed.startswith(continuation.text) and len(replayed) > len(continuation.text):
            text, matched = stops.feed(replayed[len(continuation.text) :])
            yield Delta(text, 0)
            if matched is not None:
                yield Finish(FinishReason.STOP_SEQUENCE, prompt_tokens, generated, matched)
                return
        for index, token in enumerate(reply_tokens[skip:], start=skip):
            if generated >= max_tokens:
                yield Delta(stops.flush(), 0)
                yield Finish(FinishReason.LENGTH, prompt_tokens, generated)
                return
            _fail_if_due(script, generated)
            delay = script.first_token_delay_ms if index == skip else script.token_delay_ms
            if delay:
                await asyncio.sleep(delay / 1000)
            generated += 1
            text, matched = stops.feed(token)
            yield Delta(text, 1, [index] if request.include_token_ids else [])
            if matched is not None:
                yield Finish(FinishReason.STOP_SEQUENCE, prompt_tokens, generated, matched)
                return
        _fail_if_due(script, generated)
        yield Delta(stops.flush(), 0)
        yield Finish(FinishReason.STOP, prompt_tokens, generated)


def _source(request: GenerationRequest) -> str:
    """What a scripted model reads (and echoes): the prompt, or the chat turns' text."""
    if request.prompt is not None:
        return request.prompt
    assert request.messages is not None
    return "\n".join(m.content for m in request.messages)


def _tool_call(script: ScriptedModel, request: GenerationRequest) -> ScriptedToolCall | None:
    """The call to make: the script's, when the request offers that tool, allows calls,
    and does not end with a tool result (then the model answers in text)."""
    call = script.tool_call
    if call is None or not request.calls_tools or request.messages is None:
        return None
    if request.messages and request.messages[-1].role == "tool":
        return None
    choice = request.tool_choice
    if choice.mode is ToolChoiceMode.NAMED and choice.name != call.name:
        return None
    return call if any(tool.name == call.name for tool in request.tools) else None


async def _call_tool(
    script: ScriptedModel, call: ScriptedToolCall, prompt_tokens: int
) -> AsyncGenerator[BackendEvent, None]:
    """The call as a stream: its name, then its arguments one word at a time."""
    if script.first_token_delay_ms:
        await asyncio.sleep(script.first_token_delay_ms / 1000)
    yield Delta("", 1, tool_calls=[ToolCallDelta(0, id=new_call_id(), name=call.name)])
    generated = 1
    for piece in tokens_of(json.dumps(call.arguments)):
        _fail_if_due(script, generated)
        if script.token_delay_ms:
            await asyncio.sleep(script.token_delay_ms / 1000)
        generated += 1
        yield Delta("", 1, tool_calls=[ToolCallDelta(0, arguments=piece)])
    yield Finish(FinishReason.TOOL_CALLS, prompt_tokens, generated)
