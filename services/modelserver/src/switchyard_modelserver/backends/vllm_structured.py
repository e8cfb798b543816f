"""What the vllm backend asks vLLM's structured outputs for: a request's tools and
``response_format`` as ``StructuredOutputsParams`` (xgrammar by default).

- ``response_format``: JSON object, JSON Schema, regex, grammar map one to one.
- tools in the Hermes format (the ``hermes`` tool parser; Qwen2.5/3 and Hermes
  models write it), as an xgrammar structural tag:
  ``tool_choice`` auto lets the model write anything until ``<tool_call>``,
  then holds each call to its tool's schema (triggered tags); ``required``
  makes the whole answer calls (tags with a separator, at least one); a named
  tool makes it that one call; ``parallel_tool_calls`` false stops after the
  first. With a ``response_format`` too, the answer is either the calls or
  the format.

A schema keyword xgrammar does not enforce (``not``, ``if``/``then``,
``contains``...) is INVALID_ARGUMENT naming the field, as on llamacpp; what vLLM
itself refuses (a bad grammar or regex) comes back from the engine and is
mapped to the field by :func:`refused_field`.
"""

from __future__ import annotations

import json
from typing import Any

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_modelserver.domain import (
    GenerationRequest,
    GrammarFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    RegexFormat,
    ResponseFormat,
    ToolChoiceMode,
)
from switchyard_modelserver.tools import schemas
from switchyard_modelserver.tools.hermes import END, START

ENFORCED_KEYWORDS = schemas.CONVERTER_KEYWORDS | {
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
}
"""What xgrammar enforces."""

_CALL_BEGIN = START + '\n{"name": "'
_ARGUMENTS = '", "arguments": '
_CALL_END = "}\n" + END


def structured_outputs(
    request: GenerationRequest, hermes_tools: bool, compact: bool = True
) -> dict[str, Any] | None:
    """The keyword arguments of ``StructuredOutputsParams`` for ``request`` (None: none).

    ``hermes_tools``: the backend reads tool calls in the Hermes format (else tools are
    left to the model and the tool parser, unconstrained). ``compact``: JSON inside a
    structural tag may have one whitespace character in a row at most (the engine's
    ``disable_any_whitespace`` does not reach structural tags), so that a model cannot
    loop on whitespace inside a call.
    """
    bounded = {"max_whitespace_cnt": 1} if compact else {}
    response = _response(request.response_format) if request.response_format else None
    if not request.calls_tools or not hermes_tools:
        return response
    for index, tool in enumerate(request.tools):
        _check_enforced(tool.parameters, f"tools[{index}].parameters")
    choice = request.tool_choice
    allowed = [
        t for t in request.tools if choice.mode is not ToolChoiceMode.NAMED or t.name == choice.name
    ]
    tags = [
        {
            "type": "tag",
            "begin": _CALL_BEGIN + tool.name + _ARGUMENTS,
            "content": {"type": "json_schema", "json_schema": tool.parameters, **bounded},
            "end": _CALL_END,
        }
        for tool in allowed
    ]
    single = choice.mode is ToolChoiceMode.NAMED or not request.parallel_tool_calls
    calls: dict[str, Any]
    if choice.mode is ToolChoiceMode.AUTO and response is None:
        calls = {
            "type": "triggered_tags",
            "triggers": [START],
            "tags": tags,
            "stop_after_first": single,
        }
    else:
        calls = {
            "type": "tags_with_separator",
            "tags": tags,
            "separator": "\n",
            "at_least_one": True,
            "stop_after_first": single,
        }
        if choice.mode is ToolChoiceMode.AUTO and response is not None:
            calls = {"type": "or", "elements": [calls, _as_format(response, bounded)]}
    return {"structural_tag": json.dumps({"type": "structural_tag", "format": calls})}


def check_tool_options(request: GenerationRequest, tool_parser: str, model: str) -> None:
    """INVALID_ARGUMENT for what only constrained Hermes calls can honour: forcing a
    call (``required``, a named tool) or at most one (``parallel_tool_calls`` false).
    Other parsers read whatever calls the model writes, unconstrained (and such models
    lack STRICT_TOOLS: the server refuses strict tools before the backend sees them)."""
    if not request.calls_tools or tool_parser == "hermes":
        return
    why = (
        f"the vllm backend constrains tool calls only in the Hermes format; model {model} "
        f"reads them with the {tool_parser} parser"
    )
    violations = []
    if request.tool_choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED):
        violations.append(FieldViolation("tool_choice", f"cannot force a call: {why}"))
    if not request.parallel_tool_calls:
        violations.append(
            FieldViolation("parallel_tool_calls", f"cannot limit a reply to one call: {why}")
        )
    if violations:
        raise invalid_argument(*violations)


def _response(response: ResponseFormat) -> dict[str, Any]:
    if isinstance(response, JsonObjectFormat):
        return {"json_object": True}
    if isinstance(response, JsonSchemaFormat):
        _check_enforced(response.schema, "response_format.json_schema.schema")
        return {"json": response.schema}
    if isinstance(response, RegexFormat):
        return {"regex": response.pattern}
    assert isinstance(response, GrammarFormat)
    return {"grammar": response.gbnf}


def _as_format(response: dict[str, Any], bounded: dict[str, Any]) -> dict[str, Any]:
    """A response format as a structural-tag element (for "calls or the format")."""
    if "json" in response:
        return {"type": "json_schema", "json_schema": response["json"], **bounded}
    if "json_object" in response:
        return {"type": "json_schema", "json_schema": {"type": "object"}, **bounded}
    if "regex" in response:
        return {"type": "regex", "pattern": response["regex"]}
    return {"type": "grammar", "grammar": response["grammar"]}


def _check_enforced(schema: dict[str, Any], field: str) -> None:
    schemas.refuse_unenforced(
        schema, field, ENFORCED_KEYWORDS, "vLLM's constrained decoding (xgrammar)"
    )


def refused_field(request: GenerationRequest) -> str:
    """The field to name when vLLM refuses the structured output it was given."""
    response = request.response_format
    if response is None or request.calls_tools:
        return "tools" if request.calls_tools and response is None else "response_format"
    if isinstance(response, RegexFormat):
        return "response_format.regex"
    if isinstance(response, GrammarFormat):
        return "response_format.grammar"
    if isinstance(response, JsonSchemaFormat):
        return "response_format.json_schema.schema"
    return "response_format"
