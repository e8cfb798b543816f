"""Prompt sets for `switchyard bench`: built-in synthetic ones and the user's JSONL files.

A JSONL file holds one JSON object per line, each with either ``prompt`` (a
string) or ``messages`` (a list of ``{"role": ..., "content": ...}``); other
keys are ignored and blank lines skipped. Requests take the prompts in file
order, starting again at the top when they run out.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchyard.types import Message


class PromptFileError(ValueError):
    """A prompt file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    """One request's input: a completion prompt or a chat conversation."""

    prompt: str | None = None
    messages: tuple[Message, ...] = ()


# Words of ordinary prose, so that real tokenizers see realistic token counts.
_PROSE = (
    "the a of to and in is it that for on with as was at by this be from or an are "
    "river city train signal station morning light evening market bridge harbour road "
    "north south engine carriage platform ticket window garden tower clock letter story "
    "quiet bright long short early late slowly quickly always never often together "
    "walks carries opens closes reads writes builds watches follows remembers answers"
)
_WORDS = _PROSE.split()

# Approximate words per prompt in each built-in set, and how many prompts each has.
BUILTIN_SETS = {"short": 8, "medium": 128, "long": 1024}
_PROMPTS_PER_SET = 16


def builtin(name: str) -> list[Prompt]:
    """The built-in synthetic set ``name`` (short, medium or long): same text on every run."""
    words = BUILTIN_SETS[name]
    rng = random.Random(f"switchyard-bench-{name}")  # fixed: runs are comparable
    prompts = []
    for _ in range(_PROMPTS_PER_SET):
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        prompts.append(Prompt(prompt=f"Continue this text: {text}"))
    return prompts


def load(spec: str) -> list[Prompt]:
    """A built-in set by name, or the prompts of the JSONL file at path ``spec``."""
    if spec in BUILTIN_SETS:
        return builtin(spec)
    path = Path(spec)
    if not path.is_file():
        names = ", ".join(BUILTIN_SETS)
        raise PromptFileError(f"{spec}: no such file (and not a built-in set: {names})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise PromptFileError(f"{spec}: not UTF-8 text ({error.reason})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            prompts.append(_parse_line(line, f"{spec}:{number}"))
    if not prompts:
        raise PromptFileError(f"{spec}: no prompts (expected one JSON object per line)")
    return prompts


def _parse_line(line: str, where: str) -> Prompt:
    try:
        item: Any = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not valid JSON ({error.msg})") from None
    if not isinstance(item, dict):
        raise PromptFileError(f"{where}: expected a JSON object, got {type(item).__name__}")
    has_prompt, has_messages = "prompt" in item, "messages" in item
    if has_prompt == has_messages:
        raise PromptFileError(f"{where}: needs exactly one of 'prompt' or 'messages'")
    if has_prompt:
        if not isinstance(item["prompt"], str) or not item["prompt"]:
            raise PromptFileError(f"{where}: 'prompt' must be a non-empty string")
        return Prompt(prompt=item["prompt"])
    messages = item["messages"]
    if not isinstance(messages, list) or not messages:
        raise PromptFileError(f"{where}: 'messages' must be a non-empty list")
    turns = []
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise PromptFileError(
                f"{where}: messages[{index}] must be an object with string 'role' and 'content'"
            )
        turns.append(Message(message["role"], message["content"]))
    return Prompt(messages=tuple(turns))
