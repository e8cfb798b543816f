"""GBNF grammars for the llamacpp backend: tool calls and response formats.

llama.cpp constrains sampling with a GBNF grammar. This module builds one per
request from its tools and ``response_format``:

- tools, ``required`` or a named tool: the output *is* Hermes tool calls
  (``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, arguments
  matching the tool's schema);
- tools, ``auto``: free text, but from the moment the model writes
  ``<tool_call>`` the grammar takes over (llama.cpp's lazy grammar), so a call
  the model decides to make always parses and matches the schema; with a
  ``response_format`` too, the output is either the calls or the format;
- a ``response_format`` alone: JSON (llama-cpp-python's JSON-Schema-to-GBNF
  converter), a regex (the same converter's pattern translation) or the
  caller's GBNF.

Everything fails closed: a schema keyword the converter does not enforce, a
pattern it cannot translate, or a grammar llama.cpp does not parse is
INVALID_ARGUMENT naming the field, never an unconstrained generation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.domain import (
    GenerationRequest,
    GrammarFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    RegexFormat,
    ToolChoiceMode,
)
from switchyard_modelserver.tools import schemas
from switchyard_modelserver.tools.hermes import END, START

# What llama-cpp-python 0.3.36's converter (llama_grammar.SchemaConverter) enforces.
ENFORCED_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "enum",
        "const",
        "anyOf",
        "oneOf",
        "allOf",
        "$ref",
        "$defs",
        "definitions",
        "pattern",
        "minLength",
        "maxLength",
        "format",
    }
)
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)

TRIGGER_PATTERN = r"[\s\S]*?(" + START + r"[\s\S]*)"
"""Where the lazy tool-call grammar starts: the first ``<tool_call>``."""


@dataclass(frozen=True)
class Constraint:
    """A request's grammar; ``lazy``: it applies from the first ``<tool_call>`` on."""

    gbnf: str
    lazy: bool = False


def constraint_for(request: GenerationRequest) -> Constraint | None:
    """The grammar a request needs (None: unconstrained); StatusError for what
    cannot be enforced."""
    response = request.response_format
    converter = _converter()
    rules: list[str] = []
    if response is not None:
        rules.append(_response_rule(converter, response))
    if not request.calls_tools:
        if not rules:
            return None
        return Constraint(_grammar(converter, rules[0]))
    choice = request.tool_choice
    for index, tool in enumerate(request.tools):
        _check_enforced(tool.parameters, f"tools[{index}].parameters")
    call = _visit(
        converter,
        schemas.calls_schema(request.tools, choice.mode, choice.name),
        "call",
        "tools",
    )
    block = converter._add_rule("call-block", f'"{START}" "\\n"? {call} "\\n"? "{END}"')
    calls = (
        block
        if choice.mode is ToolChoiceMode.NAMED or not request.parallel_tool_calls
        else converter._add_rule("calls", f"{block} ([ \\t\\n]* {block})*")
    )
    if choice.mode is ToolChoiceMode.AUTO and not rules:
        return Constraint(_grammar(converter, calls), lazy=True)
    if choice.mode is ToolChoiceMode.AUTO:
        return Constraint(_grammar(converter, f"{calls} | {rules[0]}"))
    return Constraint(_grammar(converter, calls))


def _converter(*, raw_pattern: bool = False) -> Any:
    from llama_cpp import llama_grammar

    converter: Any = llama_grammar.SchemaConverter  # untyped
    return converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=raw_pattern)


def _grammar(converter: Any, root: str) -> str:
    converter._rules["root"] = root
    return str(converter.format_grammar())


def _response_rule(converter: Any, response: Any) -> str:
    if isinstance(response, JsonObjectFormat):
        return _visit(converter, {"type": "object"}, "response", "response_format.json_object")
    if isinstance(response, JsonSchemaFormat):
        field = "response_format.json_schema.schema"
        _check_enforced(response.schema, field)
        return _visit(converter, response.schema, "response", field)
    if isinstance(response, RegexFormat):
        raw = _converter(raw_pattern=True)
        try:
            rule = raw._visit_pattern(f"^({response.pattern})$", "regex")
        except Exception as error:  # the converter asserts and raises on what it cannot do
            raise _refused("response_format.regex", error) from None
        for name, body in raw._rules.items():
            if name != "space":
                converter._rules[f"response-{name}"] = _renamed(body, raw._rules, "response-")
        return f"response-{rule}"
    assert isinstance(response, GrammarFormat)
    return _user_grammar(converter, response.gbnf)


def _user_grammar(converter: Any, gbnf: str) -> str:
    """The caller's GBNF, its rules prefixed so they cannot clash with ours."""
    rules: dict[str, str] = {}
    current: str | None = None
    for line in gbnf.splitlines():
        match = re.match(r"^\s*([a-zA-Z0-9-]+)\s*::=(.*)$", line)
        if match:
            current = match.group(1)
            rules[current] = match.group(2).strip()
        elif current is not None and line.strip() and not line.lstrip().startswith("#"):
            rules[current] += " " + line.strip()
    if "root" not in rules:
        raise invalid_argument(
            FieldViolation("response_format.grammar", "has no `root ::= ...` rule")
        )
    for name, body in rules.items():
        converter._rules[f"user-{name}"] = _renamed(body, rules, "user-")
    return "user-root"


def _renamed(body: str, names: dict[str, str], prefix: str) -> str:
    """``body`` with every reference to a rule in ``names`` prefixed (outside literals)."""
    out: list[str] = []
    for piece in re.split(r'("(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\])', body):
        if piece.startswith(('"', "[")):
            out.append(piece)
        else:
            out.append(
                re.sub(
                    r"[a-zA-Z][a-zA-Z0-9-]*",
                    lambda m: prefix + m.group(0) if m.group(0) in names else m.group(0),
                    piece,
                )
            )
    return "".join(out)


def _visit(converter: Any, schema: dict[str, Any], name: str, field: str) -> str:
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), f"{name}:")
        return str(converter.visit(resolved, name))
    except Exception as error:  # the converter asserts and raises on what it cannot do
        raise _refused(field, error) from None


def _check_enforced(schema: dict[str, Any], field: str) -> None:
    unenforced = list(schemas.unenforced_keywords(schema, ENFORCED_KEYWORDS))
    unenforced += [
        pointer for pointer, value in _formats(schema, "") if value not in ENFORCED_FORMATS
    ]
    if unenforced:
        raise invalid_argument(
            FieldViolation(
                field,
                f"the llamacpp backend's constrained decoding cannot enforce "
                f"{', '.join(sorted(set(unenforced)))}; remove them or use another backend",
            )
        )


def _formats(schema: Any, pointer: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "format":
                found.append((f"{pointer}/format={value}", value))
            elif key not in schemas.ANNOTATIONS and key not in ("enum", "const"):
                found += _formats(value, f"{pointer}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _formats(item, f"{pointer}/{index}")
    return found


def _refused(field: str, error: BaseException) -> StatusError:
    reason = str(error) or type(error).__name__
    return invalid_argument(
        FieldViolation(field, f"cannot be turned into a llama.cpp grammar: {reason[:300]}")
    )


def check_parses(vocab: Any, constraint: Constraint, request: GenerationRequest) -> None:
    """Raises INVALID_ARGUMENT when llama.cpp does not parse the grammar: it would
    otherwise sample unconstrained (llama-server's fail-open bug)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, constraint.gbnf.encode(), b"root")
    if sampler:
        llama_cpp.llama_sampler_free(sampler)
        return
    field = "tools"
    if isinstance(request.response_format, GrammarFormat):
        field = "response_format.grammar"
    elif request.response_format is not None and not request.calls_tools:
        field = "response_format"
    raise invalid_argument(
        FieldViolation(field, "llama.cpp could not parse the grammar it makes (see its log)")
    )
