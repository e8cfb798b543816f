"""Capabilities: what a request needs of a model, and what a model can do, as bit sets.

A model server lists per model what it can do (ListModels ``capabilities``) and
refuses anything else with INVALID_ARGUMENT naming the field, which is never
retried. On a route whose targets differ (a cloud model with tools first, a
llama.cpp model without a chat template as fallback), the picker therefore sends
a request only to targets whose model has every capability it needs, as long as
one of them can take it (``picker``).

A request's needs come from its bytes without parsing them (``needs_of``): one
pass over the top-level fields, looking inside only the few that decide a need
(the tools, the tool choice, the response format, the sampling parameters), all
short. Each bit is ``1 << Capability`` (the contract's enum number).

- ``prompt`` → COMPLETION; ``messages`` → CHAT.
- ``tools`` (any) → TOOLS, as the model server refuses tools without it even when
  the tool choice is none; a tool with ``strict`` and a tool choice other than
  none → STRICT_TOOLS.
- ``response_format`` JSON object or JSON Schema → JSON_OUTPUT; regex or
  grammar → GRAMMAR_OUTPUT.
- ``sampling.logprobs`` set (0 included: the chosen token's) → LOGPROBS.

Bytes that do not read as a request need nothing (0): the request is routed as
any other, and the model server refuses it with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from switchyard_router.request_path import wire

# The contract's Capability numbers (not imported: the picker, which reads these,
# imports nothing of gRPC or protobuf; a test holds them equal).
COMPLETION = 1 << 1
CHAT = 1 << 2
LOGPROBS = 1 << 4
TOOLS = 1 << 5
JSON_OUTPUT = 1 << 6
GRAMMAR_OUTPUT = 1 << 7
STRICT_TOOLS = 1 << 10

ROUTED = COMPLETION | CHAT | LOGPROBS | TOOLS | STRICT_TOOLS | JSON_OUTPUT | GRAMMAR_OUTPUT
"""The capabilities a request may need (the others, streaming say, decide nothing)."""
UNKNOWN = -1
"""A model whose capabilities are not known (yet): every bit set, assumed capable."""

_NAMES = {
    COMPLETION: "completion",
    CHAT: "chat",
    LOGPROBS: "logprobs",
    TOOLS: "tools",
    STRICT_TOOLS: "strict_tools",
    JSON_OUTPUT: "json_output",
    GRAMMAR_OUTPUT: "grammar_output",
}

# Top-level fields of GenerateRequest (StreamGenerateRequest has the same numbers).
_PROMPT = (2 << 3) | 2
_MESSAGES = (3 << 3) | 2
_SAMPLING = (4 << 3) | 2
_TOOLS = (7 << 3) | 2
_TOOL_CHOICE = (8 << 3) | 2
_RESPONSE_FORMAT = (9 << 3) | 2
_INSIDE = frozenset((_SAMPLING, _TOOLS, _TOOL_CHOICE, _RESPONSE_FORMAT))
# Fields inside them.
_LOGPROBS = 10 << 3  # SamplingParams.logprobs (varint)
_STRICT = 4 << 3  # Tool.strict (varint)
_CHOICE_MODE = 1 << 3  # ToolChoice.mode (varint)
_CHOICE_NAME = (2 << 3) | 2  # ToolChoice.name
TOOL_CHOICE_MODE_NONE = 2
_FORMAT_KINDS = {
    (1 << 3) | 2: JSON_OUTPUT,  # json_object
    (2 << 3) | 2: JSON_OUTPUT,  # json_schema
    (3 << 3) | 2: GRAMMAR_OUTPUT,  # regex
    (4 << 3) | 2: GRAMMAR_OUTPUT,  # grammar
}


def mask_of(capabilities: Iterable[int]) -> int:
    """The bit set of a model's listed capabilities (Capability enum numbers)."""
    mask = 0
    for capability in capabilities:
        if 0 < capability < 63:
            mask |= 1 << capability
    return mask


def describe(mask: int) -> str:
    """The routed capabilities in ``mask``, by name (for logs)."""
    if mask == UNKNOWN:
        return "unknown"
    return ", ".join(name for bit, name in _NAMES.items() if mask & bit) or "none"


def needs_of(request: bytes) -> int:
    """What ``request`` (a serialized Generate/StreamGenerate request) needs of a model:
    a bit set of :data:`ROUTED` capabilities; 0 when its bytes do not read."""
    try:
        return _scan(request)
    except (wire.MalformedRequestError, IndexError):
        return 0


def _scan(data: bytes) -> int:
    # By hand, as affinity's scan: a plain chat's only cost is stepping over its
    # messages, a few bytes read each (a function call per varint would double it).
    needs = 0
    has_tools = strict = choice_none = False
    pos, end = 0, len(data)
    varint = wire.varint
    while pos < end:
        key = data[pos]
        if key >= 0x80:  # no field read here has a tag this long
            key, pos = varint(data, pos)
        else:
            pos += 1
        if key & 7 != 2:  # the model name and prompt are strings: this is a flag or number
            pos = wire.skip(data, pos, key & 7)
            continue
        length = data[pos]
        if length >= 0x80:
            length, pos = varint(data, pos)
        else:
            pos += 1
        value_end = pos + length
        if value_end > end:
            raise wire.MalformedRequestError("field runs past the end of the message")
        if key == _MESSAGES:
            needs |= CHAT
        elif key in _INSIDE:
            if key == _TOOLS:
                has_tools = True
                strict = strict or _varint_field(data, pos, value_end, _STRICT) not in (None, 0)
            elif key == _TOOL_CHOICE:
                choice_none = _tool_choice_none(data, pos, value_end, choice_none)
            elif key == _RESPONSE_FORMAT:
                kind = _format_kind(data, pos, value_end)
                if kind:  # a later one merges over an earlier: the last kind set wins
                    needs = (needs & ~(JSON_OUTPUT | GRAMMAR_OUTPUT)) | kind
            elif _varint_field(data, pos, value_end, _LOGPROBS) is not None:  # sampling
                needs |= LOGPROBS
        elif key == _PROMPT:
            needs |= COMPLETION
        pos = value_end
    if has_tools:
        needs |= TOOLS
        if strict and not choice_none:
            needs |= STRICT_TOOLS
    return needs


def _varint_field(data: bytes, pos: int, end: int, wanted: int) -> int | None:
    """The last value of varint field ``wanted`` in the message ``data[pos:end]``
    (None: absent)."""
    value = None
    for key, _, start, _ in wire.fields(data, pos, end):
        if key == wanted:
            value = wire.varint(data, start)[0]
    return value


def _tool_choice_none(data: bytes, pos: int, end: int, before: bool) -> bool:
    """Whether this ToolChoice says none (a later one merges over ``before``)."""
    none = before
    for key, _, start, _ in wire.fields(data, pos, end):
        if key == _CHOICE_MODE:
            none = wire.varint(data, start)[0] == TOOL_CHOICE_MODE_NONE
        elif key == _CHOICE_NAME:
            none = False
    return none


def _format_kind(data: bytes, pos: int, end: int) -> int:
    """JSON_OUTPUT or GRAMMAR_OUTPUT by the ResponseFormat's kind (0: none set)."""
    kind = 0
    for key, _, _, _ in wire.fields(data, pos, end):
        kind = _FORMAT_KINDS.get(key, kind)
    return kind
