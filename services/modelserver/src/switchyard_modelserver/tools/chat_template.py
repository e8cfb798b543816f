"""Chat templates (Jinja, as Hugging Face tokenizers ship them), compiled and rendered
in a sandbox.

A template comes from the model file or, as a per-model override, from the
operator's config; either way it runs in Jinja's ``ImmutableSandboxedEnvironment``
(no attribute access to internals, no mutation of the values passed in), with
the helpers Hugging Face templates expect: ``raise_exception``, ``strftime_now``
and a ``tojson`` that keeps non-ASCII text.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRefusedError(ValueError):
    """The template refused the conversation (``raise_exception`` or a render error)."""


def _raise_exception(message: str) -> None:
    raise TemplateRefusedError(message)


def _strftime_now(format: str) -> str:
    return datetime.datetime.now().strftime(format)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.filters["tojson"] = _tojson
    return environment


class ChatTemplate:
    """One compiled chat template."""

    def __init__(self, source: str) -> None:
        """Compiles ``source``; raises ``jinja2.TemplateSyntaxError`` when it does not parse."""
        environment = _environment()
        self.source = source
        self._template = environment.from_string(source)
        variables = meta.find_undeclared_variables(environment.parse(source))
        self.knows_tools = "tools" in variables
        """Whether the template renders tool definitions itself (else the backend adds them)."""

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        bos_token: str = "",
        eos_token: str = "",
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text; raises :class:`TemplateRefusedError` when the template refuses."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        except TemplateRefusedError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as error:
            raise TemplateRefusedError(f"{type(error).__name__}: {error}") from None


@functools.lru_cache(maxsize=32)
def compiled(source: str) -> ChatTemplate:
    """The compiled template for ``source`` (cached: templates are reused per request)."""
    return ChatTemplate(source)
