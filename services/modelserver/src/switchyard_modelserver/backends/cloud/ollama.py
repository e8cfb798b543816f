"""The `ollama` backend: Ollama's native API over HTTP (httpx2).

Chat requests go to /api/chat, prompts to /api/generate (raw: the prompt is
sent as written, no template); both stream NDJSON, one JSON object a line,
the last with ``done: true`` and the token counts. /api/tags is the startup
check and the health probe: a configured model that Ollama has not pulled is
UNAVAILABLE in ListModels and health. An API key is optional (a local Ollama
needs none; a hosted one takes a bearer token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
from pydantic import Field, model_validator

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.backends.base import StateReporter
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
    ToolCallDelta,
    ToolChoiceMode,
)
from switchyard_modelserver.tools.hermes import new_call_id
from switchyard_modelserver.tools.prompting import function_definitions

log = logging.getLogger(__name__)

_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


class OllamaOptions(CloudOptions):
    """Options of the ollama backend."""

    base_url: str | None = Field(default="http://127.0.0.1:11434", description="Ollama's address")
    models: list[CloudModel] = Field(default_factory=list)
    discover: bool = Field(
        default=False,
        description="also serve every model in /api/tags at start (id: its name without "
        ":latest; context length from /api/show)",
    )
    discovered_context_length: int = Field(
        default=4096, ge=16, description="for a discovered model whose /api/show has none"
    )

    @model_validator(mode="after")
    def _models_or_discover(self) -> OllamaOptions:
        if not self.models and not self.discover:
            raise ValueError("list models, or set discover: true to serve what /api/tags lists")
        return self

    keep_alive: str | None = Field(
        default=None, description="how long Ollama keeps the model loaded (e.g. '5m')"
    )


class OllamaError(Exception):
    """An error answer from Ollama: HTTP status and its message."""

    def __init__(self, status: int, message: str, headers: httpx2.Headers) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class OllamaBackend(CloudBackend):
    """Serves the models of an Ollama server."""

    kind = "ollama"
    no_token_count = "Ollama's API has none (it reports prompt_eval_count after generating)"
    provider = "ollama"
    authoritative_model_list = True  # /api/tags: what has been pulled
    options_model = OllamaOptions
    requires_api_key = False  # a local Ollama needs none; a hosted one takes a bearer token

    def __init__(self, options: OllamaOptions) -> None:
        super().__init__(options)
        self._keep_alive = options.keep_alive
        self._discover = options.discover
        self._discovered_context_length = options.discovered_context_length
        self._http = transport.http_client(options, self.provider)
        self._base = (options.base_url or "").rstrip("/")
        self._headers = {"Accept": "application/x-ndjson"}
        self.send_key(self.secret.reveal())

    def send_key(self, key: str | None) -> None:
        self._headers.pop("Authorization", None)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    async def _get_json(self, method: str, path: str, body: Any = None) -> Any:
        """One small JSON call to Ollama; failures become StatusError."""
        try:
            response = await self._http.request(
                method,
                self._base + path,
                json=body,
                headers=self._headers,
                timeout=self.options.connect_timeout_seconds,
            )
            if response.status_code >= 400:
                raise OllamaError(
                    response.status_code, _error_text(response.text), response.headers
                )
            return response.json()
        except Exception as error:
            status = self.status_of(error, errors.MODEL_LIST, None)
            if status is None:
                raise
            raise status from None

    async def _tags(self) -> list[str]:
        """The names of the models Ollama has pulled (e.g. ``llama3.2:latest``)."""
        tags = await self._get_json("GET", "/api/tags")
        return [m["name"] for m in tags.get("models", []) if isinstance(m.get("name"), str)]

    async def list_provider_models(self) -> set[str] | None:
        names = await self._tags()
        return {n for name in names for n in (name, name.removesuffix(":latest"))}

    async def load(self, report: StateReporter) -> None:
        if self._discover:
            try:
                await self._discover_models()
            except StatusError as error:
                log.warning("ollama model discovery failed: %s", error.message)
        await super().load(report)

    async def _discover_models(self) -> None:
        taken = {n for m in self._models.values() for n in (m.id, m.upstream, *m.aliases)}
        for name in await self._tags():
            model_id = name.removesuffix(":latest")
            if model_id in taken or name in taken:
                continue
            context_length = self._discovered_context_length
            try:
                shown = await self._get_json("POST", "/api/show", {"model": name})
            except StatusError as error:
                log.warning("ollama /api/show %s failed: %s", name, error.message)
                shown = {}
            for key, value in (shown.get("model_info") or {}).items():
                if key.endswith(".context_length") and isinstance(value, int) and value >= 16:
                    context_length = value
            self._models[model_id] = CloudModel(
                id=model_id,
                provider_model=name,
                context_length=context_length,
                capabilities=["chat", "completion", "streaming", "tools", "json_output"],
            )
            log.info("discovered ollama model %s (context %d)", model_id, context_length)

    def status_of(
        self, error: Exception, model: CloudModel, request: GenerationRequest | None
    ) -> StatusError | None:
        if isinstance(error, OllamaError):
            if error.status == 200:  # an error line inside the stream
                return errors.broken_stream_error(self.provider, model, error.message)
            return errors.http_status_error(
                provider=self.provider,
                status=error.status,
                message=self.secret.scrub(error.message),
                model=model,
                headers=error.headers,
                request=request,
            )
        if isinstance(error, ValueError):  # a line that is not JSON
            return errors.broken_stream_error(self.provider, model, "malformed NDJSON line")
        return errors.transport_error(self.provider, model, error)

    def _body(self, model: CloudModel, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        sampling = request.sampling
        if sampling.logprobs is not None:
            raise errors.unsupported("sampling.logprobs", self.kind)
        options: dict[str, Any] = {}
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("seed", "seed"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
            ("repetition_penalty", "repeat_penalty"),
        ):
            value = getattr(sampling, ours)
            if value is not None:
                options[theirs] = value
        max_tokens = max_tokens_for(model, request)
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        if sampling.stop:
            options["stop"] = list(sampling.stop)
        body: dict[str, Any] = {"model": model.upstream, "stream": True, "options": options}
        if self._keep_alive is not None:
            body["keep_alive"] = self._keep_alive
        response = request.response_format
        if isinstance(response, JsonObjectFormat):
            body["format"] = "json"
        elif isinstance(response, JsonSchemaFormat):
            body["format"] = response.schema  # Ollama constrains output to it
        continuation = request.continuation.text
        if request.messages is not None:
            messages = _messages(request.messages)
            if continuation:  # a final assistant message is continued, not answered
                messages.append({"role": "assistant", "content": continuation})
            body["messages"] = messages
            if request.calls_tools:
                body["tools"] = function_definitions(request.tools)
            return "/api/chat", body
        assert request.prompt is not None
        body["prompt"] = request.prompt + continuation
        body["raw"] = True
        return "/api/generate", body

    async def stream(
        self, model: CloudModel, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        _check_tool_choice(request)
        path, body = self._body(model, request)
        http_request = self._http.build_request(
            "POST",
            self._base + path,
            json=body,
            headers=self._headers,
            timeout=transport.request_timeout(self.options, request),
        )
        response = await self._http.send(http_request, stream=True)
        calls = 0
        try:
            if response.status_code >= 400:
                text = (await response.aread()).decode(errors="replace")
                raise OllamaError(response.status_code, _error_text(text), response.headers)
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item.get("error"):
                    raise OllamaError(200, str(item["error"]), response.headers)
                text = (
                    item["message"].get("content", "")
                    if "message" in item
                    else item.get("response", "")
                )
                pieces = []
                for call in (item.get("message") or {}).get("tool_calls") or ():
                    pieces.append(_call_piece(call, calls))
                    calls += 1
                if text or pieces:
                    yield Delta(text, 1, tool_calls=pieces)
                if item.get("done"):
                    reason = _FINISH.get(item.get("done_reason", "stop"), FinishReason.STOP)
                    if calls and reason is FinishReason.STOP:
                        reason = FinishReason.TOOL_CALLS
                    yield Finish(
                        reason,
                        int(item.get("prompt_eval_count") or 0),
                        int(item.get("eval_count") or 0),
                    )
                    return
        finally:
            await response.aclose()  # also when the caller went away: the HTTP stream ends
        raise errors.broken_stream_error(self.provider, model, "ended before done")

    async def close(self) -> None:
        await super().close()
        await self._http.aclose()


def _error_text(text: str) -> str:
    try:
        item = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(item, dict) and isinstance(item.get("error"), str):
        return str(item["error"])
    return text.strip()[:500]


def _check_tool_choice(request: GenerationRequest) -> None:
    """Ollama's API decides tool calls itself: it can neither force one nor limit them
    (nor hold them to their schemas: its models lack STRICT_TOOLS, so the server refuses
    strict tools before the backend sees them)."""
    if not request.tools:
        return
    violations = []
    if request.tool_choice.mode in (ToolChoiceMode.REQUIRED, ToolChoiceMode.NAMED):
        violations.append(
            FieldViolation("tool_choice", "Ollama cannot force a tool call (auto or none only)")
        )
    if not request.parallel_tool_calls:
        violations.append(
            FieldViolation("parallel_tool_calls", "Ollama cannot limit a reply to one tool call")
        )
    if violations:
        raise invalid_argument(*violations)


def _messages(turns: tuple[ChatTurn, ...]) -> list[dict[str, Any]]:
    """Chat turns in Ollama's shape: calls with object arguments, results naming their tool."""
    names = {call.id: call.name for turn in turns for call in turn.tool_calls}
    messages: list[dict[str, Any]] = []
    for turn in turns:
        message: dict[str, Any] = {"role": turn.role, "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = [
                {"function": {"name": call.name, "arguments": json.loads(call.arguments)}}
                for call in turn.tool_calls
            ]
        if turn.role == "tool":
            message["tool_name"] = names.get(turn.tool_call_id, "")
        messages.append(message)
    return messages


def _call_piece(call: dict[str, Any], index: int) -> ToolCallDelta:
    """One of Ollama's tool calls (whole, arguments as an object) as one piece."""
    function = call.get("function") or {}
    arguments = function.get("arguments")
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return ToolCallDelta(
        index,
        id=str(call.get("id") or new_call_id()),
        name=str(function.get("name") or ""),
        arguments=text,
    )
