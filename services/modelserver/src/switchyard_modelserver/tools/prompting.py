"""How a conversation with tools reaches a chat template.

A template that knows tools (it reads ``tools``; Qwen, Llama 3.1, Mistral and
Hermes templates do) gets them in Hugging Face's shape: ``tools`` as
``{"type": "function", "function": {...}}``, assistant turns with
``tool_calls`` (arguments as objects) and ``tool`` turns with ``tool_call_id``.
A template that does not (SmolLM2's, most small models') gets plain text it
can format: the tools and the Hermes calling convention in the system
message, calls as ``<tool_call>`` text in the assistant turns, and results as
``tool`` turns of plain text (SmolLM2-135M then answers from them, where
``<tool_response>`` tags made it repeat the tags), or, for a template that
refuses a ``tool`` role, as user turns saying what the tool returned. Either way
the model is asked to answer in the Hermes format that :mod:`.hermes` reads back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from switchyard_modelserver.domain import ChatTurn, ToolCall, ToolSpec
from switchyard_modelserver.tools.hermes import END, START

_CALLING_CONVENTION = (
    "You can call functions. Their signatures, as JSON Schema, are within <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "To call a function, reply with one JSON object per call, each within "
    "<tool_call></tool_call> tags:\n"
    '<tool_call>\n{{"name": <function name>, "arguments": <arguments object>}}\n</tool_call>'
)


def function_definitions(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tools in OpenAI's / Hugging Face's shape."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in tools
    ]


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def call_text(call: ToolCall) -> str:
    """One call in the Hermes format, as the model would have written it."""
    body = json.dumps({"name": call.name, "arguments": _arguments(call)}, ensure_ascii=False)
    return f"{START}\n{body}\n{END}"


def template_messages(
    turns: Sequence[ChatTurn],
    tools: Sequence[ToolSpec],
    *,
    template_knows_tools: bool,
    tool_role: bool = True,
    offer_tools: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and ``tools``) to render with a chat template; ``tool_role``
    False: tool results as user turns, for templates that refuse a ``tool`` role.
    ``offer_tools`` False (tool_choice none): a template that knows tools still gets
    them, as its model was trained; otherwise the calling convention is left out, so
    that the model answers in words instead of writing calls it may not make."""
    if template_knows_tools:
        return [_native(turn) for turn in turns], (function_definitions(tools) or None)
    return _as_text(list(turns), tools if offer_tools else (), tool_role), None


def rendered(
    render: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str],
    turns: Sequence[ChatTurn],
    tools: Sequence[ToolSpec],
    *,
    template_knows_tools: bool,
    offer_tools: bool = True,
) -> str:
    """The prompt text ``render`` (a chat template) makes of the conversation: tool
    results as ``tool`` turns, or, if the template refuses those, as user turns."""
    messages, definitions = template_messages(
        turns, tools, template_knows_tools=template_knows_tools, offer_tools=offer_tools
    )
    try:
        return render(messages, definitions)
    except Exception:
        if template_knows_tools or not any(turn.role == "tool" for turn in turns):
            raise
    messages, definitions = template_messages(
        turns, tools, template_knows_tools=False, tool_role=False, offer_tools=offer_tools
    )
    return render(messages, definitions)


def _native(turn: ChatTurn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call)},
            }
            for call in turn.tool_calls
        ]
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    return message


def _as_text(
    turns: list[ChatTurn], tools: Sequence[ToolSpec], tool_role: bool
) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if tools:
        convention = _CALLING_CONVENTION.format(
            tools="\n".join(
                json.dumps(d["function"], ensure_ascii=False) for d in function_definitions(tools)
            )
        )
        if turns and turns[0].role == "system":
            first, *turns = turns
            messages.append({"role": "system", "content": f"{first.content}\n\n{convention}"})
        else:
            messages.append({"role": "system", "content": convention})
    names = {call.id: call.name for turn in turns for call in turn.tool_calls}
    for turn in turns:
        if turn.role == "tool" and tool_role:
            messages.append({"role": "tool", "content": turn.content})
            continue
        if turn.role == "tool":
            result = f"{names.get(turn.tool_call_id, 'the tool')} returned: {turn.content}"
            previous = messages[-1] if messages else None
            if previous is not None and previous.get("_tool_responses"):
                previous["content"] += "\n" + result  # consecutive results: one user turn
            else:
                messages.append({"role": "user", "content": result, "_tool_responses": True})
            continue
        content = turn.content
        if turn.tool_calls:
            calls = "\n".join(call_text(call) for call in turn.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        messages.append({"role": turn.role, "content": content})
    for message in messages:
        message.pop("_tool_responses", None)
    return messages
