"""JSON Schemas from requests: parsed, checked, and composed into the schema of a tool call.

A schema that does not parse or is not a valid JSON Schema (draft 2020-12) is
INVALID_ARGUMENT naming the request field. A constrained-decoding engine only
enforces the keywords its grammar converter knows; :func:`unenforced_keywords`
finds the others, so that a backend refuses them instead of silently ignoring
them (the complaint users have about llama.cpp's and xgrammar's converters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from switchyard_common.status import FieldViolation
from switchyard_modelserver.domain import ToolChoiceMode, ToolSpec

EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}

# Keywords that only annotate; no engine needs to enforce them.
ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$anchor",
    }
)

# Keywords whose value is a schema, a list of schemas, or a map of schemas.
_SUBSCHEMA = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains"})
_SUBSCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUBSCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def parse_schema(
    text: str, field: str, *, object_only: bool
) -> tuple[dict[str, Any] | None, FieldViolation | None]:
    """The schema in ``text``, or the violation naming ``field``.

    ``object_only`` (tool parameters): the schema must describe a JSON object.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        schema = json.loads(text)
    except ValueError as error:
        return None, FieldViolation(field, f"is not JSON: {error}")
    if not isinstance(schema, dict):
        return None, FieldViolation(field, "must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return None, FieldViolation(
            field, f"is not a valid JSON Schema at {where}: {error.message}"
        )
    if object_only and schema.get("type", "object") != "object":
        return None, FieldViolation(field, 'must describe an object ("type": "object")')
    return schema, None


def unenforced_keywords(schema: Any, enforced: frozenset[str], pointer: str = "") -> Iterator[str]:
    """JSON pointers (``/properties/age/minimum``) of the keywords in ``schema`` that
    are neither annotations nor in ``enforced``."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        here = f"{pointer}/{key}"
        if key in ANNOTATIONS:
            continue
        if key not in enforced:
            yield here
            continue
        if key in _SUBSCHEMA:
            yield from unenforced_keywords(value, enforced, here)
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            for index, item in enumerate(value):
                yield from unenforced_keywords(item, enforced, f"{here}/{index}")
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            for name, item in value.items():
                yield from unenforced_keywords(item, enforced, f"{here}/{name}")


def calls_schema(tools: Sequence[ToolSpec], mode: ToolChoiceMode, named: str) -> dict[str, Any]:
    """The schema of one call of a tool the choice allows (the named one, or any):
    ``{"name": <its name>, "arguments": {...}}``, name first, so that a stream
    names the tool before its arguments.

    Each tool's ``$defs`` move to the root (renamed per tool), because a
    ``#/$defs/...`` reference means the root of the schema it is in.
    """
    allowed = [t for t in tools if mode is not ToolChoiceMode.NAMED or t.name == named]
    definitions: dict[str, Any] = {}
    alternatives = []
    for tool in allowed:
        parameters = _hoisted(tool.parameters, f"{tool.name}.", definitions)
        alternatives.append(
            {
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    if definitions:
        schema = {**schema, "$defs": definitions}
    return schema


def _hoisted(schema: dict[str, Any], prefix: str, definitions: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without its ``$defs`` / ``definitions``, which go into ``definitions``
    under ``prefix`` + name, with every reference to them rewritten."""
    local = {**schema.get("$defs", {}), **schema.get("definitions", {})}
    if not local:
        return schema

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key in ("$defs", "definitions"):
                    continue
                if key == "$ref" and isinstance(value, str):
                    for root in ("#/$defs/", "#/definitions/"):
                        if value.startswith(root):
                            value = "#/$defs/" + prefix + value.removeprefix(root)
                out[key] = rewrite(value)
            return out
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    for name, definition in local.items():
        definitions[prefix + name] = rewrite(definition)
    return dict(rewrite(schema))
