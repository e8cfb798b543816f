"""The Anthropic Messages API: ``POST /v1/messages``.

Requests become the contract's GenerateRequest / StreamGenerateRequest: ``system``
(a string or text blocks) is the first message, text content blocks are joined,
``max_tokens`` (required, as Anthropic requires it), ``stop_sequences``,
temperature, top_p and top_k. Fields Switchyard cannot honour (tools until the
contract has them, thinking, images, ...) are refused by name; so is a field the API
does not have.

Answers are Anthropic's ``message`` objects; streams are its event sequence:
``message_start``, ``content_block_start``, ``ping``, a ``content_block_delta`` per
message's text, ``content_block_stop``, ``message_delta`` (stop reason and usage:
input tokens are known only at the end, so ``message_start`` reports 0 and
``message_delta`` both counts) and ``message_stop``. An error after the stream
started is an ``error`` event.
"""

from __future__ import annotations

from typing import Any

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import StatusError
from switchyard_router.http_api.api import response_id
from switchyard_router.http_api.errors import HttpError, anthropic_error, bad_field, unsupported
from switchyard_router.http_api.json_body import JsonBody, Strict, encode

STOP_REASONS = {
    pb.FINISH_REASON_STOP: "end_turn",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop_sequence",
    pb.FINISH_REASON_LENGTH: "max_tokens",
    pb.FINISH_REASON_CONTENT_FILTER: "refusal",
    pb.FINISH_REASON_CANCELLED: "cancelled",
    pb.FINISH_REASON_ERROR: "error",
}
"""Anthropic's stop_reason for each of the contract's (the last two are not Anthropic's)."""

RENAMED = {"sampling.stop": "stop_sequences"}
_ROLES = ("user", "assistant")
_UNSUPPORTED = ("tools", "tool_choice", "thinking", "container", "mcp_servers")


class Message(Strict):
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(Strict):
    model: str
    max_tokens: int
    messages: list[Message]
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool = False
    # Accepted, with no effect here.
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    cache_control: Any = None
    inference_geo: Any = None
    speed: Any = None
    user_profile_id: Any = None
    # Fields of the API that Switchyard does not serve (refused when set).
    tools: Any = None
    tool_choice: Any = None
    thinking: Any = None
    container: Any = None
    mcp_servers: Any = None


_BODY = JsonBody(MessagesRequest)


def _text(field: str, content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind != "text" or not isinstance(block.get("text"), str):
            why = f"content blocks of type {kind!r} are not supported (only text)"
            raise unsupported(f"{field}[{index}]", why)
        texts.append(block["text"])
    return "".join(texts)


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


_DELTA_HEAD = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
)
_BLOCK_START = _event(
    b"content_block_start",
    b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
)
_PING = _event(b"ping", b'{"type":"ping"}')
_BLOCK_STOP = _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
_MESSAGE_STOP = _event(b"message_stop", b'{"type":"message_stop"}')


class MessagesCall:
    """One ``/v1/messages`` request."""

    __slots__ = ("_finished", "model", "request", "streaming")

    def __init__(self, body: MessagesRequest) -> None:
        for name in _UNSUPPORTED:
            if getattr(body, name) is not None:
                raise unsupported(name)
        messages = []
        if body.system is not None:
            messages.append(pb.ChatMessage(role="system", content=_text("system", body.system)))
        for index, message in enumerate(body.messages):
            if message.role not in _ROLES:
                raise bad_field(
                    f"messages[{index}].role", f"{message.role!r} is not user or assistant"
                )
            content = _text(f"messages[{index}].content", message.content)
            messages.append(pb.ChatMessage(role=message.role, content=content))
        sampling = pb.SamplingParams(max_tokens=body.max_tokens, stop=body.stop_sequences or ())
        if body.temperature is not None:
            sampling.temperature = body.temperature
        if body.top_p is not None:
            sampling.top_p = body.top_p
        if body.top_k is not None:
            sampling.top_k = body.top_k
        kind = pb.StreamGenerateRequest if body.stream else pb.GenerateRequest
        self.request = kind(
            model=body.model, messages=messages, sampling=sampling
        ).SerializeToString()
        self.streaming = body.stream
        self.model = body.model
        self._finished = False

    def _message(self, text: str | None, stop_reason: Any, stop_sequence: str | None) -> Any:
        return {
            "id": response_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
        }

    def answer(self, response: bytes) -> bytes:
        answer = pb.GenerateResponse.FromString(response)
        message = self._message(
            answer.text,
            STOP_REASONS.get(answer.finish_reason, "end_turn"),
            answer.stop_sequence or None,
        )
        message["usage"] = {
            "input_tokens": answer.usage.prompt_tokens,
            "output_tokens": answer.usage.completion_tokens,
        }
        return encode(message)

    def opening(self) -> bytes:
        message = self._message(None, None, None)
        message["usage"] = {"input_tokens": 0, "output_tokens": 0}
        start = encode({"type": "message_start", "message": message})
        return _event(b"message_start", start) + _BLOCK_START + _PING

    def message(self, message: bytes) -> bytes:
        parsed = pb.StreamGenerateResponse.FromString(message)
        out = _DELTA_HEAD + encode(parsed.text) + b"}}\n\n" if parsed.text else b""
        if parsed.finish_reason:
            self._finished = True
            delta = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": STOP_REASONS.get(parsed.finish_reason, "end_turn"),
                    "stop_sequence": parsed.stop_sequence or None,
                },
                "usage": {
                    "input_tokens": parsed.usage.prompt_tokens,
                    "output_tokens": parsed.usage.completion_tokens,
                },
            }
            out += _BLOCK_STOP + _event(b"message_delta", encode(delta)) + _MESSAGE_STOP
        return out

    def closing(self) -> bytes:
        if self._finished:
            return b""
        self._finished = True
        delta = (
            b'{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
            b'"usage":{"output_tokens":0}}'
        )
        return _BLOCK_STOP + _event(b"message_delta", delta) + _MESSAGE_STOP

    def failure(self, error: StatusError) -> bytes:
        return _event(b"error", anthropic_error(error, RENAMED).body)


class Messages:
    """``POST /v1/messages``."""

    def call(self, body: bytes) -> MessagesCall:
        return MessagesCall(_BODY.decode(body))

    def error(self, error: StatusError) -> HttpError:
        return anthropic_error(error, RENAMED)


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
