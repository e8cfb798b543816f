"""Refuses what a model cannot do, naming the field: a request's tools, response format
or other asks are never silently ignored.

Each backend declares, per model, what it can do (``ModelCard.capabilities``:
the same list ListModels shows). A request asking for more is INVALID_ARGUMENT
before it reaches the backend, whatever the backend (third-party ones too).
"""

from __future__ import annotations

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_modelserver.domain import (
    Capability,
    GenerationRequest,
    GrammarFormat,
    JsonObjectFormat,
    JsonSchemaFormat,
    ModelCard,
    RegexFormat,
)


def check(card: ModelCard, request: GenerationRequest, backend: str) -> None:
    """Raises INVALID_ARGUMENT naming each field ``card``'s model cannot honour."""
    has = card.capabilities.__contains__
    violations: list[FieldViolation] = []

    def refuse(field: str, what: str) -> None:
        violations.append(
            FieldViolation(field, f"model {card.id} ({backend}) does not support {what}")
        )

    if request.tools and not has(Capability.TOOLS):
        refuse("tools", "tool calling")
    elif request.calls_tools and not has(Capability.STRICT_TOOLS):
        # With tool choice none no call is made: there is nothing to hold.
        for index, tool in enumerate(request.tools):
            if tool.strict:
                refuse(f"tools[{index}].strict", "holding tool calls to their schema")
    response = request.response_format
    if isinstance(response, JsonObjectFormat | JsonSchemaFormat) and not has(
        Capability.JSON_OUTPUT
    ):
        refuse("response_format", "JSON output")
    if isinstance(response, RegexFormat) and not has(Capability.GRAMMAR_OUTPUT):
        refuse("response_format.regex", "regex-constrained output")
    if isinstance(response, GrammarFormat) and not has(Capability.GRAMMAR_OUTPUT):
        refuse("response_format.grammar", "grammar-constrained output")
    if violations:
        raise invalid_argument(*violations)
