"""The OpenAI API: ``POST /v1/chat/completions`` and ``POST /v1/completions``.

Requests become the contract's GenerateRequest / StreamGenerateRequest: messages
(``developer`` is ``system``; text content parts are joined; an assistant's
``tool_calls`` and ``tool`` results carry over), ``max_tokens`` or
``max_completion_tokens``, temperature, top_p, stop, seed, the penalties and
logprobs, function ``tools``, ``tool_choice``, ``parallel_tool_calls``,
``response_format`` (text, json_object, json_schema), and vLLM's extensions
``top_k`` and ``repetition_penalty``. Fields of the API that Switchyard cannot
honour (``n`` > 1, ``logit_bias``, audio, the legacy ``functions``, ...) are
refused by name rather than ignored; a field the API does not have is refused too.

Answers are OpenAI's ``chat.completion`` / ``text_completion`` objects (tool calls
in ``message.tool_calls``, finish reason ``tool_calls``); streams are its
server-sent events: a first chunk with the assistant role, one chunk per message's
text and tool-call pieces (a call's first piece with its index, id and name, later
ones with argument fragments), a last chunk with the finish reason, the usage chunk when
``stream_options.include_usage`` is set (then every chunk carries ``"usage":null``),
and ``data: [DONE]``. An error after the stream started is an ``error`` event.
"""

from __future__ import annotations

from typing import Any

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import StatusError
from switchyard_router.http_api.api import JsonApi, joined_text, now, response_id
from switchyard_router.http_api.errors import bad_field, openai_error, unsupported
from switchyard_router.http_api.json_body import Strict, encode

FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_STOP_SEQUENCE: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_CONTENT_FILTER: "content_filter",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_CANCELLED: "cancelled",
    pb.FINISH_REASON_ERROR: "error",
}
"""OpenAI's finish_reason for each of the contract's (the last two are not OpenAI's own)."""

_TOOL_FIELDS = ("name", "description", "parameters", "strict")
# Contract field paths as this API names them (in errors).
RENAMED = {
    "sampling.logprobs": "top_logprobs",
    # A tool's fields sit in its "function" object here.
    **{f"tools[].{name}": f"tools[].function.{name}" for name in _TOOL_FIELDS},
}
_COMPLETIONS_RENAMED = {"sampling.logprobs": "logprobs"}
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_TOOL_CHOICE_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
_DONE = b"data: [DONE]\n\n"


class StreamOptions(Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted; there is nothing to obfuscate


class _Sampling(Strict, kw_only=True):
    """The sampling fields both endpoints share."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions.
    top_k: int | None = None
    repetition_penalty: float | None = None


class FunctionCall(Strict):
    name: str
    arguments: str


class ToolCallIn(Strict, kw_only=True):
    id: str
    type: str = "function"
    function: FunctionCall


class ChatMessage(Strict):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class FunctionDefinition(Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(Strict):
    type: str
    function: FunctionDefinition | None = None
    custom: Any = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Accepted, with no effect here.
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Any = None
    safety_identifier: str | None = None
    verbosity: str | None = None
    parallel_tool_calls: bool | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    # Fields of the API that Switchyard does not serve (refused when set).
    functions: Any = None
    function_call: Any = None
    modalities: Any = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: str | list[str]
    logprobs: int | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


def _sampling(body: _Sampling, max_tokens: int | None) -> pb.SamplingParams:
    if body.n not in (None, 1):
        raise unsupported("n", "must be 1 (Switchyard generates one choice per request)")
    if body.logit_bias:
        raise unsupported("logit_bias")
    sampling = pb.SamplingParams()
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.top_k is not None:
        sampling.top_k = body.top_k
    if body.seed is not None:
        sampling.seed = body.seed
    if body.presence_penalty is not None:
        sampling.presence_penalty = body.presence_penalty
    if body.frequency_penalty is not None:
        sampling.frequency_penalty = body.frequency_penalty
    if body.repetition_penalty is not None:
        sampling.repetition_penalty = body.repetition_penalty
    if isinstance(body.stop, str):
        sampling.stop.append(body.stop)
    elif body.stop:
        sampling.stop.extend(body.stop)
    return sampling


def _request(body: _Sampling, **fields: Any) -> bytes:
    message = pb.StreamGenerateRequest if body.stream else pb.GenerateRequest
    return message(model=body.model, **fields).SerializeToString()


def _content(index: int, message: ChatMessage) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise bad_field(f"messages[{index}].content", "is required")
    if isinstance(content, str):
        return content
    return joined_text(f"messages[{index}].content", content, "content parts")


_CHAT_UNSUPPORTED = (
    "functions",
    "function_call",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "web_search_options",
)


def _chat_messages(body: ChatCompletionRequest) -> list[pb.ChatMessage]:
    messages = []
    for index, message in enumerate(body.messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise bad_field(
                f"messages[{index}].role",
                f"{message.role!r} is not supported (system, developer, user, assistant or tool)",
            )
        turn = pb.ChatMessage(
            role=role, content=_content(index, message), tool_call_id=message.tool_call_id or ""
        )
        for call_index, call in enumerate(message.tool_calls or ()):
            if call.type != "function":
                raise unsupported(
                    f"messages[{index}].tool_calls[{call_index}].type",
                    f"{call.type!r} calls are not supported (only function)",
                )
            turn.tool_calls.add(
                id=call.id, name=call.function.name, arguments=call.function.arguments
            )
        messages.append(turn)
    return messages


def _tools(body: ChatCompletionRequest) -> dict[str, Any]:
    """The contract's tools, tool_choice, parallel_tool_calls and response_format."""
    fields: dict[str, Any] = {}
    tools = []
    for index, tool in enumerate(body.tools or ()):
        if tool.type != "function" or tool.function is None:
            raise unsupported(
                f"tools[{index}].type", f"{tool.type!r} tools are not supported (only function)"
            )
        function = tool.function
        parameters = "" if function.parameters is None else encode(function.parameters).decode()
        tools.append(
            pb.Tool(
                name=function.name,
                description=function.description or "",
                parameters=parameters,
                strict=bool(function.strict),
            )
        )
    if tools:
        fields["tools"] = tools
    choice = body.tool_choice
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICE_MODES:
            raise bad_field("tool_choice", f"{choice!r} is not none, auto or required")
        fields["tool_choice"] = pb.ToolChoice(mode=_TOOL_CHOICE_MODES[choice])
    elif choice is not None:
        name = (
            (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        )
        if not isinstance(name, str):
            raise bad_field(
                "tool_choice",
                'expected none, auto, required or {"type": "function", "function": {"name": ...}}',
            )
        fields["tool_choice"] = pb.ToolChoice(name=name)
    if body.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = body.parallel_tool_calls
    response_format = _response_format(body.response_format)
    if response_format is not None:
        fields["response_format"] = response_format
    return fields


def _response_format(value: dict[str, Any] | None) -> pb.ResponseFormat | None:
    if value is None or value.get("type") == "text":
        return None
    kind = value.get("type")
    if kind == "json_object":
        return pb.ResponseFormat(json_object=pb.JsonObjectFormat())
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise bad_field("response_format.json_schema.schema", "is required (a JSON Schema)")
        return pb.ResponseFormat(
            json_schema=pb.JsonSchemaFormat(
                name=str(spec.get("name") or ""), schema=encode(spec["schema"]).decode()
            )
        )
    raise bad_field("response_format.type", f"{kind!r} is not text, json_object or json_schema")


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _tool_call_deltas(deltas: Any) -> bytes:
    pieces = []
    for delta in deltas:
        piece: dict[str, Any] = {"index": delta.index}
        if delta.id:
            piece["id"] = delta.id
            piece["type"] = "function"
            piece["function"] = {"name": delta.name, "arguments": delta.arguments}
        else:
            piece["function"] = {"arguments": delta.arguments}
        pieces.append(piece)
    return encode(pieces)


def _usage(usage: pb.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _chat_logprobs(tokens: Any) -> dict[str, Any] | None:
    if not tokens:
        return None
    return {
        "content": [
            {
                "token": token.text,
                "logprob": token.logprob,
                "bytes": list(token.text.encode()),
                "top_logprobs": [
                    {"token": top.text, "logprob": top.logprob, "bytes": list(top.text.encode())}
                    for top in token.top_logprobs
                ],
            }
            for token in tokens
        ],
        "refusal": None,
    }


def _completion_logprobs(tokens: Any, offset: int) -> dict[str, Any] | None:
    if not tokens:
        return None
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [{top.text: top.logprob for top in token.top_logprobs} for token in tokens],
        "text_offset": offsets,
    }


class _Stream:
    """What every OpenAI stream of one request shares: id, created, model, usage."""

    __slots__ = ("_head", "_tail", "_usage_head", "finished", "include_usage")

    def __init__(self, prefix: str, kind: str, model: str, include_usage: bool) -> None:
        common = b'"id":%s,"object":%s,"created":%d,"model":%s' % (
            encode(response_id(prefix)),
            encode(kind),
            now(),
            encode(model),
        )
        self._head = b"data: {" + common + b',"choices":[{"index":0,'
        self._usage_head = b"data: {" + common + b',"choices":[],"usage":'
        self._tail = b'}],"usage":null}\n\n' if include_usage else b"}]}\n\n"
        self.include_usage = include_usage
        self.finished = False

    def chunk(self, choice: bytes) -> bytes:
        """A chunk whose one choice has these fields (after ``"index":0,``)."""
        return self._head + choice + self._tail

    def closing(self) -> bytes:
        """``[DONE]`` for a stream that ended without its last message (else b"")."""
        return b"" if self.finished else self.end(None)

    def end(self, usage: pb.Usage | None) -> bytes:
        """The usage chunk (when asked for) and ``[DONE]``."""
        self.finished = True
        if self.include_usage and usage is not None:
            return self._usage_head + encode(_usage(usage)) + b"}\n\n" + _DONE
        return _DONE

    @staticmethod
    def failure(error: StatusError, rename: dict[str, str]) -> bytes:
        return b"data: " + openai_error(error, rename).body + b"\n\n"


class ChatCall:
    """One ``/v1/chat/completions`` request."""

    __slots__ = ("_stream", "model", "request", "streaming")

    counts_tokens = False

    def __init__(self, body: ChatCompletionRequest) -> None:
        for name in _CHAT_UNSUPPORTED:
            if getattr(body, name) is not None:
                raise unsupported(name)
        if not body.model:
            raise bad_field("model", "is required")
        max_tokens = body.max_completion_tokens
        if max_tokens is None:
            max_tokens = body.max_tokens
        sampling = _sampling(body, max_tokens)
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_field("top_logprobs", "needs logprobs: true")
        if body.logprobs:
            sampling.logprobs = body.top_logprobs or 0
        self.streaming = body.stream
        self.model = body.model
        self.request = _request(
            body, messages=_chat_messages(body), sampling=sampling, **_tools(body)
        )
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        self._stream = (
            _Stream("chatcmpl-", "chat.completion.chunk", body.model, include_usage)
            if body.stream
            else None
        )

    def answer(self, response: bytes) -> bytes:
        answer = pb.GenerateResponse.FromString(response)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
        if answer.tool_calls:
            message["content"] = answer.text or None
            message["tool_calls"] = _tool_calls(answer.tool_calls)
        return encode(
            {
                "id": response_id("chatcmpl-"),
                "object": "chat.completion",
                "created": now(),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": _chat_logprobs(answer.tokens),
                        "finish_reason": FINISH_REASONS.get(answer.finish_reason, "stop"),
                    }
                ],
                "usage": _usage(answer.usage),
            }
        )

    def opening(self) -> bytes:
        assert self._stream is not None
        return self._stream.chunk(
            b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null'
        )

    def message(self, message: bytes) -> bytes:
        stream = self._stream
        assert stream is not None
        parsed = pb.StreamGenerateResponse.FromString(message)
        out = b""
        if parsed.text or parsed.tokens:
            logprobs = _chat_logprobs(parsed.tokens)
            out = stream.chunk(
                b'"delta":{"content":%s},"logprobs":%s,"finish_reason":null'
                % (encode(parsed.text), b"null" if logprobs is None else encode(logprobs))
            )
        if parsed.tool_calls:
            out += stream.chunk(
                b'"delta":{"tool_calls":%s},"logprobs":null,"finish_reason":null'
                % _tool_call_deltas(parsed.tool_calls)
            )
        if parsed.finish_reason:
            finish = encode(FINISH_REASONS.get(parsed.finish_reason, "stop"))
            out += stream.chunk(b'"delta":{},"logprobs":null,"finish_reason":%s' % finish)
            out += stream.end(parsed.usage)
        return out

    def closing(self) -> bytes:
        assert self._stream is not None
        return self._stream.closing()

    def failure(self, error: StatusError) -> bytes:
        return _Stream.failure(error, RENAMED)


class CompletionCall:
    """One ``/v1/completions`` request."""

    __slots__ = ("_offset", "_stream", "model", "request", "streaming")

    counts_tokens = False

    def __init__(self, body: CompletionRequest) -> None:
        if not body.model:
            raise bad_field("model", "is required")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise unsupported("prompt", "must be one string (or a list of one)")
            prompt = prompt[0]
        if body.echo:
            raise unsupported("echo")
        if body.suffix is not None:
            raise unsupported("suffix")
        if body.best_of not in (None, 1):
            raise unsupported("best_of", "must be 1")
        sampling = _sampling(body, body.max_tokens)
        if body.logprobs is not None:
            sampling.logprobs = body.logprobs
        self.streaming = body.stream
        self.model = body.model
        self.request = _request(body, prompt=prompt, sampling=sampling)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        self._stream = (
            _Stream("cmpl-", "text_completion", body.model, include_usage) if body.stream else None
        )
        self._offset = 0

    def answer(self, response: bytes) -> bytes:
        answer = pb.GenerateResponse.FromString(response)
        return encode(
            {
                "id": response_id("cmpl-"),
                "object": "text_completion",
                "created": now(),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "text": answer.text,
                        "logprobs": _completion_logprobs(answer.tokens, 0),
                        "finish_reason": FINISH_REASONS.get(answer.finish_reason, "stop"),
                    }
                ],
                "usage": _usage(answer.usage),
            }
        )

    def opening(self) -> bytes:
        return b""

    def message(self, message: bytes) -> bytes:
        stream = self._stream
        assert stream is not None
        parsed = pb.StreamGenerateResponse.FromString(message)
        logprobs = _completion_logprobs(parsed.tokens, self._offset)
        self._offset += len(parsed.text)
        finish = (
            encode(FINISH_REASONS.get(parsed.finish_reason, "stop"))
            if parsed.finish_reason
            else b"null"
        )
        out = b""
        if parsed.text or parsed.finish_reason:
            out = stream.chunk(
                b'"text":%s,"logprobs":%s,"finish_reason":%s'
                % (encode(parsed.text), b"null" if logprobs is None else encode(logprobs), finish)
            )
        if parsed.finish_reason:
            out += stream.end(parsed.usage)
        return out

    def closing(self) -> bytes:
        assert self._stream is not None
        return self._stream.closing()

    def failure(self, error: StatusError) -> bytes:
        return _Stream.failure(error, _COMPLETIONS_RENAMED)


CHAT_COMPLETIONS = JsonApi(
    ChatCompletionRequest, ChatCall, lambda error: openai_error(error, RENAMED)
)
"""``POST /v1/chat/completions``."""
COMPLETIONS = JsonApi(
    CompletionRequest, CompletionCall, lambda error: openai_error(error, _COMPLETIONS_RENAMED)
)
"""``POST /v1/completions``."""


def model_list(response: pb.ListModelsResponse) -> bytes:
    """``GET /v1/models``: the routes as OpenAI's model list."""
    return encode({"object": "list", "data": [model_object(m) for m in response.models]})


def model_object(model: pb.Model) -> dict[str, Any]:
    """One model as OpenAI describes it."""
    return {"id": model.id, "object": "model", "created": 0, "owned_by": "switchyard"}
