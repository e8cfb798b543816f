"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Requests become the contract's GenerateRequest / StreamGenerateRequest: ``system``
(a string or text blocks) is the first message, text content blocks are joined, an
assistant's ``tool_use`` blocks are its tool calls and a user's ``tool_result``
blocks are ``tool`` messages; ``max_tokens`` (required, as Anthropic requires it),
``stop_sequences``, temperature, top_p, top_k, custom ``tools`` (their
``input_schema``) and ``tool_choice`` (auto, any, tool, none;
``disable_parallel_tool_use``) and ``output_config.format`` (structured outputs: a
JSON Schema). Fields Switchyard cannot honour (server tools, thinking, images, ...)
are refused by name; so is a field the API does not have.
``count_tokens`` is the contract's CountTokens.

Answers are Anthropic's ``message`` objects (tool calls as ``tool_use`` blocks,
stop reason ``tool_use``); streams are its event sequence: ``message_start``, then
per content block ``content_block_start`` (the first followed by ``ping``), its
deltas (``text_delta``, or ``input_json_delta`` fragments of a tool call's input)
and ``content_block_stop``, then ``message_delta`` (stop reason and usage: input
tokens are known only at the end, so ``message_start`` reports 0 and
``message_delta`` both counts) and ``message_stop``. An error after the stream
started is an ``error`` event.
"""

from __future__ import annotations

import json
from typing import Any

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import StatusError
from switchyard_router.http_api.api import JsonApi, joined_text, response_id
from switchyard_router.http_api.errors import anthropic_error, bad_field, unsupported
from switchyard_router.http_api.json_body import Strict, encode

STOP_REASONS = {
    pb.FINISH_REASON_STOP: "end_turn",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    pb.FINISH_REASON_LENGTH: "max_tokens",
    pb.FINISH_REASON_CONTENT_FILTER: "refusal",
    pb.FINISH_REASON_TOOL_CALLS: "tool_use",
    pb.FINISH_REASON_CANCELLED: "cancelled",
    pb.FINISH_REASON_ERROR: "error",
}
"""Anthropic's stop_reason for each of the contract's (the last two are not Anthropic's)."""

RENAMED = {"sampling.stop": "stop_sequences", "tools[].parameters": "tools[].input_schema"}
_ROLES = ("user", "assistant")
_UNSUPPORTED = ("thinking", "container", "mcp_servers")
_TOOL_CHOICE_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "any": pb.TOOL_CHOICE_MODE_REQUIRED,
    "none": pb.TOOL_CHOICE_MODE_NONE,
}


class Message(Strict):
    role: str
    content: str | list[dict[str, Any]]


class _Input(Strict, kw_only=True):
    """What a generation and a token count share."""

    model: str
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    # Fields of the API that Switchyard does not serve (refused when set).
    thinking: Any = None
    container: Any = None
    mcp_servers: Any = None


class MessagesRequest(_Input, kw_only=True):
    max_tokens: int
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    output_config: dict[str, Any] | None = None
    # Accepted, with no effect here.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    cache_control: Any = None
    inference_geo: Any = None
    speed: Any = None
    user_profile_id: Any = None


class CountTokensRequest(_Input, kw_only=True):
    pass


def _text(field: str, content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return joined_text(field, content, "content blocks")


def _turns(index: int, message: Message) -> list[pb.ChatMessage]:
    """A message as the contract's turns: tool results become ``tool`` turns (before
    the user's own text, as they answer the previous turn's calls)."""
    field = f"messages[{index}].content"
    if message.role not in _ROLES:
        raise bad_field(f"messages[{index}].role", f"{message.role!r} is not user or assistant")
    if isinstance(message.content, str):
        return [pb.ChatMessage(role=message.role, content=message.content)]
    turns: list[pb.ChatMessage] = []
    texts: list[str] = []
    calls: list[pb.ToolCall] = []
    for block_index, block in enumerate(message.content):
        kind = block.get("type")
        where = f"{field}[{block_index}]"
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and message.role == "assistant":
            arguments = encode(block.get("input") or {}).decode()
            calls.append(
                pb.ToolCall(
                    id=str(block.get("id", "")),
                    name=str(block.get("name", "")),
                    arguments=arguments,
                )
            )
        elif kind == "tool_result" and message.role == "user":
            result = block.get("content", "")
            text = _text(f"{where}.content", result if isinstance(result, list) else str(result))
            if block.get("is_error"):
                text = f"error: {text}"
            turns.append(
                pb.ChatMessage(
                    role="tool", content=text, tool_call_id=str(block.get("tool_use_id", ""))
                )
            )
        else:
            raise unsupported(
                where, f"{kind!r} blocks are not supported in a {message.role} message"
            )
    if texts or calls or not turns:
        turns.append(pb.ChatMessage(role=message.role, content="".join(texts), tool_calls=calls))
    return turns


def _input(body: _Input) -> dict[str, Any]:
    """The contract's messages, tools and tool_choice for a request's input."""
    for name in _UNSUPPORTED:
        if getattr(body, name) is not None:
            raise unsupported(name)
    messages = []
    if body.system is not None:
        messages.append(pb.ChatMessage(role="system", content=_text("system", body.system)))
    for index, message in enumerate(body.messages):
        messages.extend(_turns(index, message))
    fields: dict[str, Any] = {"model": body.model, "messages": messages}
    tools = []
    for index, tool in enumerate(body.tools or ()):
        if tool.get("type", "custom") != "custom" or not isinstance(tool.get("name"), str):
            raise unsupported(
                f"tools[{index}]",
                "only custom tools (name, description, input_schema) are supported",
            )
        schema = tool.get("input_schema")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise bad_field(f"tools[{index}].strict", f"{strict!r} is not true or false")
        tools.append(
            pb.Tool(
                name=tool["name"],
                description=str(tool.get("description") or ""),
                parameters="" if schema is None else encode(schema).decode(),
                strict=bool(strict),
            )
        )
    if tools:
        fields["tools"] = tools
    choice = body.tool_choice
    if choice is not None:
        kind = choice.get("type")
        if kind == "tool" and isinstance(choice.get("name"), str):
            fields["tool_choice"] = pb.ToolChoice(name=choice["name"])
        elif kind in _TOOL_CHOICE_MODES:
            fields["tool_choice"] = pb.ToolChoice(mode=_TOOL_CHOICE_MODES[kind])
        else:
            raise bad_field("tool_choice.type", f"{kind!r} is not auto, any, tool or none")
        if choice.get("disable_parallel_tool_use"):
            fields["parallel_tool_calls"] = False
    return fields


def _output_format(value: Any) -> pb.ResponseFormat:
    """``output_config.format`` (structured outputs) as the contract's response_format."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        raise bad_field("output_config.format.type", "must be json_schema")
    if not isinstance(value.get("schema"), dict):
        raise bad_field("output_config.format.schema", "is required (a JSON Schema)")
    schema = encode(value["schema"]).decode()
    return pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(name="response", schema=schema))


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


_PING = _event(b"ping", b'{"type":"ping"}')
_MESSAGE_STOP = _event(b"message_stop", b'{"type":"message_stop"}')


def _tool_input(arguments: str) -> Any:
    """A tool call's arguments as the ``input`` object (``{}`` if they are not one)."""
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class MessagesCall:
    """One ``/v1/messages`` request; a stream's content blocks open as content comes."""

    __slots__ = (
        "_finished",
        "_next_block",
        "_open",
        "_tool_blocks",
        "model",
        "request",
        "streaming",
    )

    counts_tokens = False

    def __init__(self, body: MessagesRequest) -> None:
        fields = _input(body)
        sampling = pb.SamplingParams(max_tokens=body.max_tokens, stop=body.stop_sequences or ())
        if body.temperature is not None:
            sampling.temperature = body.temperature
        if body.top_p is not None:
            sampling.top_p = body.top_p
        if body.top_k is not None:
            sampling.top_k = body.top_k
        output = body.output_config or {}
        unknown = sorted(set(output) - {"format", "effort"})
        if unknown:
            raise bad_field(f"output_config.{unknown[0]}", "is not a field of this API")
        if output.get("format") is not None:
            fields["response_format"] = _output_format(output["format"])
        kind = pb.StreamGenerateRequest if body.stream else pb.GenerateRequest
        self.request = kind(sampling=sampling, **fields).SerializeToString()
        self.streaming = body.stream
        self.model = body.model
        self._finished = False
        self._open: tuple[int, str] | None = None  # (index, "text" or "tool_use")
        self._next_block = 0
        self._tool_blocks: dict[int, int] = {}

    def _message(self, content: list[Any], stop_reason: Any, stop_sequence: str | None) -> Any:
        return {
            "id": response_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        }

    def answer(self, response: bytes) -> bytes:
        answer = pb.GenerateResponse.FromString(response)
        content: list[Any] = []
        if answer.text or not answer.tool_calls:
            content.append({"type": "text", "text": answer.text})
        content += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c.arguments)}
            for c in answer.tool_calls
        ]
        message = self._message(
            content,
            STOP_REASONS.get(answer.finish_reason, "end_turn"),
            answer.stop_sequence or None,
        )
        message["usage"] = {
            "input_tokens": answer.usage.prompt_tokens,
            "output_tokens": answer.usage.completion_tokens,
        }
        return encode(message)

    def opening(self) -> bytes:
        message = self._message([], None, None)
        message["usage"] = {"input_tokens": 0, "output_tokens": 0}
        return _event(b"message_start", encode({"type": "message_start", "message": message}))

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        """Closes the open block and starts the next one (the first with a ping)."""
        out = self._close()
        index = self._next_block
        self._next_block += 1
        self._open = (index, kind)
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out += _event(b"content_block_start", encode(start))
        return out + _PING if index == 0 else out

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        index = self._open[0]
        self._open = None
        return _event(b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % index)

    def _delta(self, index: int, delta: bytes) -> bytes:
        return _event(
            b"content_block_delta",
            b'{"type":"content_block_delta","index":%d,"delta":%s}' % (index, delta),
        )

    def message(self, message: bytes) -> bytes:
        parsed = pb.StreamGenerateResponse.FromString(message)
        out = b""
        if parsed.text:
            if self._open is None or self._open[1] != "text":
                out += self._start("text", {"type": "text", "text": ""})
            opened = self._open
            assert opened is not None  # _start opened it
            out += self._delta(opened[0], b'{"type":"text_delta","text":%s}' % encode(parsed.text))
        for piece in parsed.tool_calls:
            if piece.index not in self._tool_blocks:
                block = {"type": "tool_use", "id": piece.id, "name": piece.name, "input": {}}
                out += self._start("tool_use", block)
                self._tool_blocks[piece.index] = self._next_block - 1
            if piece.arguments:
                partial = encode({"type": "input_json_delta", "partial_json": piece.arguments})
                out += self._delta(self._tool_blocks[piece.index], partial)
        if parsed.finish_reason:
            out += self._end(
                STOP_REASONS.get(parsed.finish_reason, "end_turn"),
                parsed.stop_sequence or None,
                {
                    "input_tokens": parsed.usage.prompt_tokens,
                    "output_tokens": parsed.usage.completion_tokens,
                },
            )
        return out

    def _end(self, stop_reason: str, stop_sequence: str | None, usage: dict[str, int]) -> bytes:
        self._finished = True
        out = b""
        if self._next_block == 0:  # no content at all: one empty text block, as Anthropic
            out += self._start("text", {"type": "text", "text": ""})
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": usage,
        }
        return out + self._close() + _event(b"message_delta", encode(delta)) + _MESSAGE_STOP

    def closing(self) -> bytes:
        if self._finished:
            return b""
        return self._end("end_turn", None, {"output_tokens": 0})

    def failure(self, error: StatusError) -> bytes:
        return _event(b"error", anthropic_error(error, RENAMED).body)


class TokenCountCall:
    """One ``/v1/messages/count_tokens`` request: the contract's CountTokens."""

    __slots__ = ("request",)

    streaming = False
    counts_tokens = True

    def __init__(self, body: CountTokensRequest) -> None:
        self.request = pb.CountTokensRequest(**_input(body)).SerializeToString()

    def answer(self, response: bytes) -> bytes:
        counted = pb.CountTokensResponse.FromString(response)
        return encode({"input_tokens": counted.prompt_tokens})

    def opening(self) -> bytes:
        return b""

    def message(self, message: bytes) -> bytes:
        return b""

    def closing(self) -> bytes:
        return b""

    def failure(self, error: StatusError) -> bytes:
        return b""


MESSAGES = JsonApi(MessagesRequest, MessagesCall, lambda error: anthropic_error(error, RENAMED))
"""``POST /v1/messages``."""
TOKEN_COUNT = JsonApi(
    CountTokensRequest, TokenCountCall, lambda error: anthropic_error(error, RENAMED)
)
"""``POST /v1/messages/count_tokens``."""


def model_list(response: pb.ListModelsResponse) -> bytes:
    """``GET /v1/models`` for the Anthropic SDK: its paged model list (one page)."""
    data = [model_object(m) for m in response.models]
    return encode(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


def model_object(model: pb.Model) -> dict[str, Any]:
    """One model as Anthropic describes it."""
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.id,
        "created_at": "1970-01-01T00:00:00Z",
    }
