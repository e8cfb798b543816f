"""The `scripted` backend: deterministic replies with injectable latency and faults.

For load tests, chaos tests and users' own CI; never a default. Each model
either echoes its input or replies with canned text, one word per token, with
an optional delay per token and an optional failure after N tokens.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Literal

import grpc
from pydantic import Field, model_validator

from switchyard_common.status import StatusError
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.domain import (
    BackendEvent,
    Delta,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelCard,
    ModelState,
    PromptCounted,
)
from switchyard_modelserver.stops import StopMatcher

_TOKEN = re.compile(r"\s*\S+|\s+")

FailureCode = Literal["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED"]


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
            ModelCard(id=m.id, aliases=tuple(m.aliases), context_length=m.context_length)
            for m in self._models.values()
        ]

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
        source = request.prompt
        if source is None:
            assert request.messages is not None
            source = "\n".join(m.content for m in request.messages)
        prompt_tokens = len(tokens_of(source))
        yield PromptCounted(prompt_tokens)
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
