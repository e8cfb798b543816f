"""The tool-calling and structured-output fields of a request: protobuf in, domain out,
with a violation naming every bad field.

- ``tools``: names unique, 1-64 of ``[A-Za-z0-9_-]``; ``parameters`` a JSON
  Schema of an object (empty: no arguments).
- ``tool_choice``: a named tool must be one of ``tools``; ``required`` and a
  named tool need tools.
- ``messages``: ``tool_calls`` only on assistant turns, each with a unique id,
  a tool of the request and arguments that are a JSON object; a ``tool`` turn
  answers, by ``tool_call_id``, a call an earlier assistant turn made and no
  earlier tool turn answered.
- ``response_format``: a JSON Schema that is one, a regex that compiles, a
  grammar that is not empty.

What an engine can enforce of a valid schema is the backend's to check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import FieldViolation
from switchyard_modelserver.domain import (
    ChatTurn,
    GrammarFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    RegexFormat,
    ResponseFormat,
    ToolCall,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from switchyard_modelserver.tools import schemas

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
_MODES = {
    pb.TOOL_CHOICE_MODE_UNSPECIFIED: ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_AUTO: ToolChoiceMode.AUTO,
    pb.TOOL_CHOICE_MODE_NONE: ToolChoiceMode.NONE,
    pb.TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode.REQUIRED,
}


def tools(
    given: Sequence[pb.Tool], has_prompt: bool, violations: list[FieldViolation]
) -> tuple[ToolSpec, ...]:
    """The request's tools, checked."""
    if not given:
        return ()
    if has_prompt:
        violations.append(FieldViolation("tools", "tools need a chat (messages), not a prompt"))
    if len(given) > MAX_TOOLS:
        violations.append(FieldViolation("tools", f"at most {MAX_TOOLS} (got {len(given)})"))
    found: list[ToolSpec] = []
    seen: set[str] = set()
    for index, tool in enumerate(given[:MAX_TOOLS]):
        field = f"tools[{index}]"
        if not NAME.match(tool.name):
            violations.append(
                FieldViolation(f"{field}.name", "must be 1 to 64 letters, digits, '_' or '-'")
            )
        elif tool.name in seen:
            violations.append(FieldViolation(f"{field}.name", f"{tool.name!r} is given twice"))
        seen.add(tool.name)
        parameters = dict(schemas.EMPTY_OBJECT)
        if tool.parameters.strip():
            parsed, violation = schemas.parse_schema(
                tool.parameters, f"{field}.parameters", object_only=True
            )
            if violation is not None:
                violations.append(violation)
            elif parsed is not None:
                parameters = parsed
        found.append(ToolSpec(tool.name, tool.description, parameters, tool.strict))
    return tuple(found)


def tool_choice(
    request: pb.GenerateRequest | pb.StreamGenerateRequest | pb.CountTokensRequest,
    tool_specs: Sequence[ToolSpec],
    violations: list[FieldViolation],
) -> ToolChoice:
    """The request's tool choice (auto when unset), checked against its tools."""
    if not request.HasField("tool_choice"):
        return ToolChoice()
    given = request.tool_choice
    which = given.WhichOneof("choice")
    names = [t.name for t in tool_specs]
    if which == "name":
        if given.name not in names:
            have = ", ".join(names) if names else "none"
            violations.append(
                FieldViolation(
                    "tool_choice.name",
                    f"unknown tool {_clip(given.name)!r}; the request's tools: {have}",
                )
            )
        return ToolChoice(ToolChoiceMode.NAMED, given.name)
    if which is None:
        return ToolChoice()
    mode = _MODES.get(given.mode)
    if mode is None:
        violations.append(FieldViolation("tool_choice.mode", f"unknown value {given.mode}"))
        return ToolChoice()
    if mode is ToolChoiceMode.REQUIRED and not tool_specs:
        violations.append(FieldViolation("tool_choice.mode", "required needs tools"))
    return ToolChoice(mode)


def chat_turns(
    messages: Sequence[pb.ChatMessage],
    tool_specs: Sequence[ToolSpec],
    violations: list[FieldViolation],
) -> tuple[ChatTurn, ...]:
    """The conversation, with its tool calls and tool results checked."""
    names = {t.name for t in tool_specs}
    calls: set[str] = set()  # every call id made so far
    open_calls: set[str] = set()  # made and not answered yet
    turns: list[ChatTurn] = []
    for index, message in enumerate(messages):
        field = f"messages[{index}]"
        made: list[ToolCall] = []
        if message.tool_calls and message.role != "assistant":
            violations.append(
                FieldViolation(f"{field}.tool_calls", "only assistant messages call tools")
            )
        for number, call in enumerate(message.tool_calls):
            made.append(_call(call, f"{field}.tool_calls[{number}]", names, calls, violations))
            open_calls.add(call.id)
        if message.role == "tool":
            if not message.tool_call_id:
                violations.append(
                    FieldViolation(
                        f"{field}.tool_call_id",
                        "a tool message must name the call it answers",
                    )
                )
            elif message.tool_call_id not in open_calls:
                answered = " (it was answered already)" if message.tool_call_id in calls else ""
                violations.append(
                    FieldViolation(
                        f"{field}.tool_call_id",
                        f"no earlier assistant message made a call with id "
                        f"{_clip(message.tool_call_id)!r}{answered}",
                    )
                )
            open_calls.discard(message.tool_call_id)
        elif message.tool_call_id:
            violations.append(
                FieldViolation(f"{field}.tool_call_id", "only tool messages answer a call")
            )
        turns.append(ChatTurn(message.role, message.content, tuple(made), message.tool_call_id))
    return tuple(turns)


def _call(
    call: pb.ToolCall,
    field: str,
    names: set[str],
    calls: set[str],
    violations: list[FieldViolation],
) -> ToolCall:
    if not call.id:
        violations.append(FieldViolation(f"{field}.id", "is required"))
    elif call.id in calls:
        violations.append(FieldViolation(f"{field}.id", f"{_clip(call.id)!r} is used twice"))
    calls.add(call.id)
    if call.name not in names:
        have = ", ".join(sorted(names)) if names else "none"
        violations.append(
            FieldViolation(
                f"{field}.name", f"unknown tool {_clip(call.name)!r}; the request's tools: {have}"
            )
        )
    arguments = call.arguments.strip() or "{}"
    try:
        parsed = json.loads(arguments)
    except ValueError as error:
        violations.append(FieldViolation(f"{field}.arguments", f"is not JSON: {error}"))
    else:
        if not isinstance(parsed, dict):
            violations.append(FieldViolation(f"{field}.arguments", "must be a JSON object"))
    return ToolCall(call.id, call.name, arguments)


def response_format(
    request: pb.GenerateRequest | pb.StreamGenerateRequest, violations: list[FieldViolation]
) -> ResponseFormat | None:
    """The request's response format (None: plain text), checked."""
    if not request.HasField("response_format"):
        return None
    given = request.response_format
    which = given.WhichOneof("format")
    if which == "json_object":
        return JsonObjectFormat()
    if which == "json_schema":
        name = given.json_schema.name or "response"
        if not NAME.match(name):
            violations.append(
                FieldViolation(
                    "response_format.json_schema.name",
                    "must be 1 to 64 letters, digits, '_' or '-'",
                )
            )
        field = "response_format.json_schema.schema"
        if not given.json_schema.schema.strip():
            violations.append(FieldViolation(field, "is required"))
            return None
        schema, violation = schemas.parse_schema(given.json_schema.schema, field, object_only=False)
        if violation is not None:
            violations.append(violation)
            return None
        assert schema is not None
        return JsonSchemaFormat(schema, name)
    if which == "regex":
        try:
            re.compile(given.regex)
        except re.error as error:
            violations.append(
                FieldViolation("response_format.regex", f"is not a regular expression: {error}")
            )
        if not given.regex:
            violations.append(FieldViolation("response_format.regex", "must not be empty"))
        return RegexFormat(given.regex)
    if which == "grammar":
        if not given.grammar.strip():
            violations.append(FieldViolation("response_format.grammar", "must not be empty"))
        return GrammarFormat(given.grammar)
    return None


def _clip(text: str, length: int = 64) -> str:
    """User text quoted in an error, cut short."""
    return text if len(text) <= length else text[:length] + "..."
