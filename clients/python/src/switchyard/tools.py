"""Tools the model may call, and the tool choice: what ``tools=`` and ``tool_choice=`` take.

    weather = Tool(
        "get_weather",
        "Current weather in a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    answer = client.chat(model, messages, tools=[weather], tool_choice="required")
    for call in answer.tool_calls:
        result = get_weather(**call.parsed_arguments())
        messages += [answer.message, Message.tool_result(call, result)]

A tool is a :class:`Tool`, a dict (``{"name", "description", "parameters",
"strict"}`` or OpenAI's ``{"type": "function", "function": {...}}``) or a
pydantic model class (its JSON Schema are the parameters; pydantic itself is not
a dependency of this SDK). A strict tool (``strict=True``) is called only with
its name and arguments that match its schema: a backend that cannot promise that
refuses the request (INVALID_ARGUMENT naming ``tools[i].strict``).
``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or the name of one tool
(or that :class:`Tool`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from switchyard.v1 import llm_service_pb2 as pb

_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}


@dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, what it does, the JSON Schema of
    its arguments (an object schema; empty: no arguments), and whether every call
    must match that schema (``strict``: the backend guarantees it or refuses the
    request)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        name: str | None = None,
        description: str | None = None,
        strict: bool = False,
    ) -> Tool:
        """A tool whose arguments are a pydantic model (``model_json_schema()``); its
        name and description default to the class's name and docstring."""
        schema = json_schema_of(model)
        if schema is None:
            raise TypeError(f"{model!r} is not a pydantic model class")
        return cls(
            name or model.__name__,
            description if description is not None else (model.__doc__ or "").strip(),
            schema,
            strict,
        )


ToolLike = Tool | Mapping[str, Any] | type
"""What ``tools=`` takes: a :class:`Tool`, a dict, or a pydantic model class."""


def json_schema_of(value: Any) -> dict[str, Any] | None:
    """The JSON Schema of a pydantic model class (None for anything else)."""
    method = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(method):
        schema = method()
        return dict(schema) if isinstance(schema, Mapping) else None
    return None


def as_tool(value: ToolLike) -> Tool:
    """One ``tools=`` item as a :class:`Tool`."""
    if isinstance(value, Tool):
        return value
    if isinstance(value, type):
        return Tool.from_model(value)
    if isinstance(value, Mapping):
        definition = value.get("function", value) if value.get("type") == "function" else value
        strict = definition.get("strict")
        if strict is not None and not isinstance(strict, bool):
            # A JSON file's "false" (a string) must not make a tool strict.
            raise ValueError(
                f"tool {definition.get('name')!r}: strict is {strict!r}, not true or false"
            )
        return Tool(
            str(definition["name"]),
            str(definition.get("description") or ""),
            dict(definition.get("parameters") or {}),
            bool(strict),
        )
    raise TypeError(f"not a tool: {value!r}")


def tool_messages(tools: Sequence[ToolLike]) -> list[pb.Tool]:
    """The request's ``tools``."""
    converted = []
    for item in tools:
        tool = as_tool(item)
        parameters = json.dumps(dict(tool.parameters)) if tool.parameters else ""
        converted.append(
            pb.Tool(
                name=tool.name,
                description=tool.description,
                parameters=parameters,
                strict=tool.strict,
            )
        )
    return converted


def tool_choice_message(choice: str | Tool) -> pb.ToolChoice:
    """The request's ``tool_choice``: a mode, or the one tool to call."""
    if isinstance(choice, Tool):
        return pb.ToolChoice(name=choice.name)
    if choice in _MODES:
        return pb.ToolChoice(mode=_MODES[choice])
    return pb.ToolChoice(name=choice)
