"""What the tool-calling and structured-output tests share: tools, schemas, checks.

The schemas bound every string and number (enums, maxLength), so that even a
random model under constrained decoding must finish its JSON within a few
dozen tokens: the grammar, not the model, guarantees the shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import jsonschema

from switchyard import Completion, FinishReason, StreamChunk, Tool, ToolCall, join_tool_calls
from switchyard._convert import MessageLike

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = Tool("get_weather", "Current weather in a city", WEATHER_PARAMETERS)
TIME = Tool(
    "get_time",
    "Current time in a time zone",
    {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
        "additionalProperties": False,
    },
)
TOOLS = [WEATHER, TIME]

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Z][a-z]{1,11}$"},
        "country": {"type": "string", "enum": ["France", "Italy"]},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}

QUESTION: list[MessageLike] = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_calls(calls: Iterable[ToolCall], tools: Iterable[Tool] = TOOLS) -> list[ToolCall]:
    """Every call names one of ``tools`` and its arguments parse and match its schema."""
    schemas = {tool.name: tool.parameters for tool in tools}
    calls = list(calls)
    assert calls, "no tool call"
    for call in calls:
        assert call.id, call
        assert call.name in schemas, call
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])
    return calls


def streamed(chunks: Iterable[StreamChunk]) -> tuple[str, list[ToolCall], StreamChunk]:
    """(text, tool calls, last chunk) of a stream, reassembled."""
    chunks = list(chunks)
    pieces = [piece for chunk in chunks for piece in chunk.tool_calls]
    # A call's first piece names it; its arguments follow.
    named: set[int] = set()
    for piece in pieces:
        if piece.name:
            named.add(piece.index)
        assert piece.index in named, f"arguments before the name: {piece}"
    return "".join(c.text for c in chunks), join_tool_calls(pieces), chunks[-1]


def same_answer(unary: Completion, chunks: Iterable[StreamChunk]) -> None:
    """A stream reassembled equals the unary answer (call ids are per generation)."""
    text, calls, last = streamed(chunks)
    assert text == unary.text
    assert [(c.name, c.arguments) for c in calls] == [
        (c.name, c.arguments) for c in unary.tool_calls
    ]
    assert last.finish_reason == unary.finish_reason
    assert last.usage == unary.usage


def tool_round(answer: Completion, result: Any) -> list[MessageLike]:
    """The conversation after ``answer``'s calls, each answered with ``result``."""
    from switchyard import Message

    assert answer.finish_reason is FinishReason.TOOL_CALLS
    return [answer.message, *(Message.tool_result(call, result) for call in answer.tool_calls)]
