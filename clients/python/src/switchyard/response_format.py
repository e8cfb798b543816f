"""What ``response_format=`` takes: the shape the model's output must have.

    client.chat(model, messages, response_format="json_object")       # any JSON object
    client.chat(model, messages, response_format=City)                # a pydantic model class
    client.chat(model, messages, response_format={"type": "object", ...})   # a JSON Schema
    client.chat(model, messages, response_format=Regex(r"[A-Z][a-z]+"))
    client.chat(model, messages, response_format=Grammar('root ::= "yes" | "no"'))

A backend that cannot enforce the format answers INVALID_ARGUMENT (the SDK's
``InvalidArgumentError``, naming the field) rather than ignoring it. Pydantic is
optional: a model class is only asked for ``model_json_schema()``, and
``completion.json()`` (or ``Model.model_validate_json(completion.text)``) reads
the answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from switchyard.tools import json_schema_of
from switchyard.v1 import llm_service_pb2 as pb


@dataclass(frozen=True)
class JsonSchema:
    """JSON that matches ``schema``; ``name`` (default ``response``) is for providers
    that require one."""

    schema: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class Regex:
    """Text the regular expression matches whole."""

    pattern: str


@dataclass(frozen=True)
class Grammar:
    """Text a GBNF grammar (llama.cpp's format, start rule ``root``) accepts."""

    gbnf: str


ResponseFormatLike = (
    Literal["json_object", "json"] | JsonSchema | Regex | Grammar | Mapping[str, Any] | type
)


def response_format_message(value: ResponseFormatLike) -> pb.ResponseFormat:
    """The request's ``response_format``."""
    if value in ("json_object", "json"):
        return pb.ResponseFormat(json_object=pb.JsonObjectFormat())
    if isinstance(value, JsonSchema):
        return _schema(value.schema, value.name)
    if isinstance(value, Regex):
        return pb.ResponseFormat(regex=value.pattern)
    if isinstance(value, Grammar):
        return pb.ResponseFormat(grammar=value.gbnf)
    schema = json_schema_of(value)
    if schema is not None:
        assert isinstance(value, type)
        return _schema(schema, value.__name__)
    if isinstance(value, Mapping):
        if value.get("type") == "json_object":  # OpenAI's shape
            return pb.ResponseFormat(json_object=pb.JsonObjectFormat())
        if value.get("type") == "json_schema" and isinstance(value.get("json_schema"), Mapping):
            inner = value["json_schema"]
            return _schema(inner.get("schema") or {}, str(inner.get("name") or ""))
        return _schema(value, "")
    raise TypeError(f"not a response format: {value!r}")


def _schema(schema: Mapping[str, Any], name: str) -> pb.ResponseFormat:
    return pb.ResponseFormat(
        json_schema=pb.JsonSchemaFormat(name=name, schema=json.dumps(dict(schema)))
    )
