"""Per-model defaults from the model server's config: sampling, a system prompt and a
chat-template override, applied to each request before the backend sees it.

    model_defaults:
      smollm2-135m-instruct:          # a model id or alias
        temperature: 0.2
        top_p: 0.9
        max_tokens: 256
        stop: ["<|im_end|>"]
        system_prompt: You are a concise assistant.
        chat_template_file: /etc/switchyard/smollm2.jinja   # or chat_template: "..."

A request's own values always win: defaults fill only what it leaves unset (a
system prompt only goes first in a chat that has no system message). A
chat template runs in Jinja's sandbox, for backends that format chats
themselves (llamacpp, vllm); other backends refuse the key at start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import jinja2
from pydantic import BaseModel, ConfigDict, Field, model_validator

from switchyard_modelserver.domain import ChatTurn, GenerationRequest
from switchyard_modelserver.tools.chat_template import ChatTemplate


class ModelDefaultsConfig(BaseModel):
    """One entry of ``model_defaults:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] = Field(default_factory=list, max_length=8)
    system_prompt: str | None = Field(
        default=None, description="first message of a chat that has no system message"
    )
    chat_template: str | None = Field(
        default=None, description="Jinja chat template used instead of the model's own"
    )
    chat_template_file: Path | None = Field(default=None, description="the same, from a file")

    @model_validator(mode="after")
    def _one_template(self) -> ModelDefaultsConfig:
        if self.chat_template is not None and self.chat_template_file is not None:
            raise ValueError("set chat_template or chat_template_file, not both")
        if any(not stop for stop in self.stop):
            raise ValueError("stop: sequences must not be empty")
        return self

    def template_source(self) -> str | None:
        """The override's text (read from its file when given as one); raises
        ValueError when it cannot be read or does not compile."""
        source = self.chat_template
        if self.chat_template_file is not None:
            try:
                source = self.chat_template_file.read_text()
            except OSError as error:
                raise ValueError(
                    f"chat_template_file: cannot read {self.chat_template_file}: {error.strerror}"
                ) from None
        if source is None:
            return None
        try:
            ChatTemplate(source)
        except jinja2.TemplateSyntaxError as error:
            raise ValueError(
                f"chat template does not compile: line {error.lineno}: {error}"
            ) from None
        return source


@dataclass(frozen=True)
class ModelDefaults:
    """A model's defaults, resolved at start (the template read and compiled)."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    chat_template: str | None = None

    @classmethod
    def from_config(cls, config: ModelDefaultsConfig) -> ModelDefaults:
        return cls(
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=config.max_tokens,
            stop=tuple(config.stop),
            system_prompt=config.system_prompt,
            chat_template=config.template_source(),
        )

    def apply(self, request: GenerationRequest) -> GenerationRequest:
        """``request`` with what it leaves unset taken from these defaults."""
        sampling = request.sampling
        filled = dataclasses.replace(
            sampling,
            temperature=_either(sampling.temperature, self.temperature),
            top_p=_either(sampling.top_p, self.top_p),
            max_tokens=_either(sampling.max_tokens, self.max_tokens),
            stop=sampling.stop or self.stop,
        )
        messages = request.messages
        if (
            self.system_prompt
            and messages is not None
            and not any(turn.role == "system" for turn in messages)
        ):
            messages = (ChatTurn("system", self.system_prompt), *messages)
        return dataclasses.replace(
            request,
            sampling=filled,
            messages=messages,
            chat_template=self.chat_template or request.chat_template,
        )


_T = TypeVar("_T")


def _either(value: _T | None, default: _T | None) -> _T | None:
    return default if value is None else value
