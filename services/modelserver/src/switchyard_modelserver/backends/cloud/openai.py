"""The `openai` backend: OpenAI, or any OpenAI-compatible API, through the official SDK.

``base_url`` points it at Azure OpenAI, vLLM's server, Ollama's /v1, TGI or
Gemini's OpenAI-compatible endpoint. Chat requests go to /chat/completions,
prompts to /completions; both always stream (with usage in the final chunk),
so Generate and StreamGenerate see the same events.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal
from urllib.parse import urlsplit

import openai
from pydantic import Field

from switchyard_common.status import StatusError
from switchyard_modelserver.backends.cloud import errors, transport
from switchyard_modelserver.backends.cloud.backend import CloudBackend, max_tokens_for
from switchyard_modelserver.backends.cloud.options import CloudModel, CloudOptions
from switchyard_modelserver.domain import (
    ChatTurn,
    Delta,
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    TokenLogprob,
    ToolCallDelta,
    ToolChoiceMode,
    ToolSpec,
)
from switchyard_modelserver.tools.prompting import function_definitions

_OPENAI_HOST = "api.openai.com"
"""Where OpenAI's own API answers (it holds strict tools' calls to their schemas)."""

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


class OpenAIOptions(CloudOptions):
    """Options of the openai backend."""

    organization: str | None = None
    project: str | None = None
    default_headers: dict[str, str] = Field(
        default_factory=dict, description="extra headers on every request (never secrets)"
    )
    default_query: dict[str, str] = Field(
        default_factory=dict, description="extra query parameters, e.g. Azure's api-version"
    )
    max_tokens_parameter: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="how chat requests send max_tokens; OpenAI's reasoning models take only "
        "max_completion_tokens, most compatible servers only max_tokens",
    )
    strict_tools: bool | None = Field(
        default=None,
        description="whether the server holds a tool's calls to its schema when the tool "
        "says function.strict (OpenAI's API does; many compatible servers ignore the flag); "
        "unset: true for OpenAI's API (no base_url, or api.openai.com), false for other "
        "servers, whose models then refuse strict tools (INVALID_ARGUMENT) rather than "
        "pass them on unenforced",
    )
    stream_usage: bool = Field(
        default=True,
        description="ask for usage in the final stream chunk (stream_options.include_usage); "
        "turn off for servers that reject it",
    )


class OpenAIBackend(CloudBackend):
    """Serves models of an OpenAI-compatible API."""

    kind = "openai"
    provider = "openai"
    options_model = OpenAIOptions
    requires_api_key = False  # a local OpenAI-compatible server (vLLM, Ollama) may need none
    no_token_count = (
        "OpenAI's API has none (usage.prompt_tokens comes with each answer; tiktoken counts "
        "client-side, without the server's message formatting)"
    )

    def __init__(self, options: OpenAIOptions) -> None:
        super().__init__(options)
        self._openai_options = options
        self._client = openai.AsyncOpenAI(
            api_key=self.secret.reveal() or "unused",
            organization=options.organization,
            project=options.project,
            base_url=options.base_url,
            max_retries=options.max_retries,
            default_headers=options.default_headers or None,
            default_query=options.default_query or None,
            http_client=transport.http_client(options, self.provider),
        )

    def send_key(self, key: str | None) -> None:
        self._client.api_key = key or "unused"

    def holds_strict_tools(self) -> bool:
        options = self._openai_options
        if options.strict_tools is not None:
            return options.strict_tools
        # A compatible server (vLLM, SGLang, a proxy) may take function.strict and ignore it.
        return options.base_url is None or urlsplit(options.base_url).hostname == _OPENAI_HOST

    async def list_provider_models(self) -> set[str] | None:
        return await self.sdk_model_ids(self._client)

    def status_of(
        self, error: Exception, model: CloudModel, request: GenerationRequest | None
    ) -> StatusError | None:
        if isinstance(error, openai.APITimeoutError):
            return errors.timeout_error(self.provider, model)
        if isinstance(error, openai.APIStatusError):
            return errors.http_status_error(
                provider=self.provider,
                status=error.status_code,
                message=_message(error),
                model=model,
                headers=error.response.headers,
                request=request,
                error_type=_error_type(error.body),
            )
        if isinstance(error, openai.APIConnectionError):
            return errors.sdk_connection_error(self.provider, model, error)
        if isinstance(error, openai.APIError):  # an error event inside the stream
            inner = error.body if isinstance(error.body, dict) else {}
            event_status = errors.error_event_status(inner.get("code"), inner.get("type"))
            if event_status is None:
                return errors.broken_stream_error(self.provider, model, _message(error))
            return errors.http_status_error(
                provider=self.provider,
                status=event_status,
                message=_message(error),
                model=model,
                headers={},
                request=request,
                error_type=_error_type(error.body),
            )
        if isinstance(error, ValueError):  # a chunk that is not JSON
            return errors.broken_stream_error(self.provider, model, "malformed chunk")
        return errors.transport_error(self.provider, model, error)

    def _arguments(self, model: CloudModel, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        arguments: dict[str, Any] = {
            "model": model.upstream,
            "stream": True,
            "timeout": transport.request_timeout(self.options, request),
        }
        if self._openai_options.stream_usage:
            arguments["stream_options"] = {"include_usage": True}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(sampling, name)
            if value is not None:
                arguments[name] = value
        if sampling.stop:
            arguments["stop"] = list(sampling.stop)
        # Not OpenAI parameters, but vLLM's and TGI's servers take them.
        extra = {
            name: getattr(sampling, name)
            for name in ("top_k", "repetition_penalty")
            if getattr(sampling, name) is not None
        }
        if extra:
            arguments["extra_body"] = extra
        if sampling.logprobs is not None:
            if request.messages is not None:
                arguments["logprobs"] = True
                arguments["top_logprobs"] = sampling.logprobs
            else:  # the completions API takes the number of alternatives
                arguments["logprobs"] = sampling.logprobs
        max_tokens = max_tokens_for(model, request)
        if max_tokens is not None:
            chat = request.messages is not None
            arguments[self._openai_options.max_tokens_parameter if chat else "max_tokens"] = (
                max_tokens
            )
        if request.tools:
            arguments["tools"] = _tools(request.tools)
            arguments["tool_choice"] = _tool_choice(request)
            if not request.parallel_tool_calls:
                arguments["parallel_tool_calls"] = False
        response = request.response_format
        if response is not None:
            if request.messages is None:
                raise errors.unsupported("response_format", "openai completions API")
            if isinstance(response, JsonObjectFormat):
                arguments["response_format"] = {"type": "json_object"}
            elif isinstance(response, JsonSchemaFormat):
                # strict: OpenAI's constrained decoding (it refuses schemas it cannot enforce).
                arguments["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": response.name,
                        "schema": response.schema,
                        "strict": True,
                    },
                }
        return arguments

    async def stream(
        self, model: CloudModel, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        arguments = self._arguments(model, request)
        continuation = request.continuation.text
        if request.messages is not None:
            if continuation:
                raise errors.unsupported("continuation", "openai chat")
            messages = [_chat_message(turn) for turn in request.messages]
            stream: Any = await self._client.chat.completions.create(
                messages=messages,  # type: ignore[arg-type]
                **arguments,
            )
        else:
            assert request.prompt is not None
            stream = await self._client.completions.create(
                prompt=request.prompt + continuation, **arguments
            )
        finish: FinishReason | None = None
        stop_sequence = ""
        prompt_tokens = completion_tokens = chunks = 0
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    text = _choice_text(choice)
                    logprobs = _logprobs(choice) if request.sampling.logprobs is not None else []
                    calls = _tool_call_pieces(choice)
                    if text or logprobs or calls:
                        chunks += 1
                        yield Delta(
                            text, max(1, len(logprobs)), logprobs=logprobs, tool_calls=calls
                        )
                    if choice.finish_reason:
                        finish = _FINISH.get(choice.finish_reason, FinishReason.STOP)
                        # vLLM names the stop sequence that matched.
                        matched = (choice.model_extra or {}).get("stop_reason")
                        if isinstance(matched, str) and matched in request.sampling.stop:
                            finish, stop_sequence = FinishReason.STOP_SEQUENCE, matched
        finally:
            await stream.close()  # also when the caller went away: the HTTP stream ends
        if finish is None:
            raise errors.broken_stream_error(
                self.provider, model, "no finish reason before the end"
            )
        yield Finish(finish, prompt_tokens, completion_tokens or chunks, stop_sequence)

    async def close(self) -> None:
        await super().close()
        await self._client.close()


def _choice_text(choice: Any) -> str:
    delta = getattr(choice, "delta", None)
    if delta is not None:  # chat
        return str(delta.content or "")
    return str(getattr(choice, "text", "") or "")


def _logprobs(choice: Any) -> list[TokenLogprob]:
    """A chunk's token log probabilities, from either API's shape."""
    logprobs = getattr(choice, "logprobs", None)
    if logprobs is None:
        return []
    content = getattr(logprobs, "content", None)
    if content is not None:  # chat: [{token, logprob, top_logprobs: [{token, logprob}]}]
        return [
            TokenLogprob(
                0,  # the API gives no token ids
                item.token,
                item.logprob,
                tuple((0, top.token, top.logprob) for top in item.top_logprobs or ()),
            )
            for item in content
        ]
    tokens = getattr(logprobs, "tokens", None) or []  # completions: parallel lists
    values = getattr(logprobs, "token_logprobs", None) or []
    tops = getattr(logprobs, "top_logprobs", None) or []
    return [
        TokenLogprob(
            0,
            token,
            float(value or 0.0),
            tuple((0, text, float(p)) for text, p in (tops[i] or {}).items())
            if i < len(tops)
            else (),
        )
        for i, (token, value) in enumerate(zip(tokens, values, strict=False))
    ]


def _message(error: openai.APIError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(error.message)


def _error_type(body: object) -> str:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return " ".join(str(inner.get(k) or "") for k in ("type", "code"))
    return ""


def _tools(tools: tuple[ToolSpec, ...]) -> list[dict[str, Any]]:
    """The request's tools in OpenAI's shape; a strict tool with ``function.strict``
    (OpenAI's constrained decoding: it refuses, with a 400, a schema strict mode cannot
    take, and that reaches the caller as INVALID_ARGUMENT with OpenAI's message)."""
    definitions = function_definitions(tools)
    for tool, definition in zip(tools, definitions, strict=True):
        if tool.strict:
            definition["function"]["strict"] = True
    return definitions


def _tool_choice(request: GenerationRequest) -> Any:
    choice = request.tool_choice
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode.value  # auto, none, required


def _chat_message(turn: ChatTurn) -> dict[str, Any]:
    """A chat turn in OpenAI's shape (an assistant's tool calls, a tool's result)."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["content"] = turn.content or None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ]
    if turn.role == "tool":
        message["tool_call_id"] = turn.tool_call_id
    return message


def _tool_call_pieces(choice: Any) -> list[ToolCallDelta]:
    """A chat chunk's tool-call deltas (index, id and name first, then argument fragments)."""
    delta = getattr(choice, "delta", None)
    pieces = []
    for call in getattr(delta, "tool_calls", None) or ():
        function = call.function
        pieces.append(
            ToolCallDelta(
                call.index,
                id=call.id or "",
                name=(function.name if function is not None else None) or "",
                arguments=(function.arguments if function is not None else None) or "",
            )
        )
    return pieces
