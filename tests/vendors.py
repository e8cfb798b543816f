"""Fake cloud vendors on 127.0.0.1 that speak each vendor's HTTP wire format.

One aiohttp server answers three APIs, as the real services do:

- OpenAI: ``GET /v1/models``, ``POST /v1/chat/completions`` and
  ``POST /v1/completions``: JSON, or SSE ``data: {...}`` chunks with a usage
  chunk and ``data: [DONE]``; errors as ``{"error": {"message", "type", "code"}}``
  with OpenAI's rate-limit headers; bearer keys.
- Anthropic: ``GET /v1/models`` and ``POST /v1/messages`` (``x-api-key``):
  the SSE sequence message_start, content_block_start, ping,
  content_block_delta…, content_block_stop, message_delta, message_stop;
  errors as ``{"type": "error", "error": {"type", "message"}}``, 529
  ``overloaded_error``, and error events inside a stream.
- Ollama: ``GET /api/tags``, ``POST /api/show``, ``POST /api/chat`` and ``POST /api/generate``:
  NDJSON lines ending with ``done: true`` and the token counts.

The backends always stream, so generations are answered as streams only. The
reply is ``Hello from <vendor>: <the last input>``, one word per token.

Tools and structured output, as each vendor streams them: a request offering
tools (and allowing a call) gets a call of the first allowed tool (of each
one for OpenAI's ``required`` and Anthropic's ``any`` when parallel calls are
allowed), with arguments made from the tool's schema (first enum value,
``Paris`` for strings, 1 for numbers): OpenAI's ``delta.tool_calls`` (id and
name, then argument fragments, ``finish_reason: tool_calls``), Anthropic's
``tool_use`` block with ``input_json_delta`` fragments (``stop_reason:
tool_use``), Ollama's whole ``message.tool_calls``. A request whose last
message is a tool result is answered ``Hello from <vendor>: <the result>``. A
JSON Schema response format (OpenAI ``response_format``, Anthropic
``output_config.format``, Ollama ``format``) is answered with JSON made from
the schema the same way. Anthropic's ``POST /v1/messages/count_tokens``
counts words of the system prompt, the messages and the tools' JSON, exactly
as its generations report ``input_tokens``. OpenAI refuses (400, as it does) a
strict function whose parameters strict mode cannot take (no
``additionalProperties: false``, or a property not required).
The provider model name picks a fault, so one server serves every test:
``fault-429``, ``fault-429-reset`` (no retry-after: only the vendor's rate-limit
reset headers), ``fault-429-odd-header`` (a retry-after no one can read),
``fault-500``, ``fault-529``, ``fault-overloaded-midstream``,
``fault-ratelimit-midstream`` (a rate-limit error event inside the stream), ``fault-context``,
``fault-malformed``, ``fault-drop``, ``fault-slow`` (first byte after 5 s),
``slow-stream`` (a token every 50 ms, 200 tokens). Unknown models get the
vendor's 404. Every request is recorded (path, headers, body, and whether the
client went away before the end).

Tests find the record of the request they just sent by a request id: a unique
string (``new_request_id()``) they put in the request's input (a message or the
prompt), which the model server passes to the vendor untouched, so a record is
never another test's request for the same model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

VALID_KEY = "sk-test-valid-key-0123456789abcdef"
MODELS = [
    "ok",
    "fault-429",
    "fault-429-reset",
    "fault-429-odd-header",
    "fault-500",
    "fault-529",
    "fault-overloaded-midstream",
    "fault-ratelimit-midstream",
    "fault-context",
    "fault-400",
    "fault-403",
    "fault-418",
    "fault-malformed",
    "fault-drop",
    "fault-slow",
    "slow-stream",
]
SLOW_FIRST_BYTE_SECONDS = 5.0
RETRY_AFTER_SECONDS = 7
RATE_LIMIT_RESET_SECONDS = 90  # fault-429-reset: when the exhausted limit resets
OLLAMA_CONTEXT_LENGTH = 2048  # what /api/show reports for every model


def _reset_headers(vendor: str) -> dict[str, str]:
    """Rate-limit headers without retry-after: requests exhausted, tokens left."""
    if vendor == "anthropic":  # RFC 3339 times
        now = datetime.now(UTC)
        return {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": (
                now + timedelta(seconds=RATE_LIMIT_RESET_SECONDS)
            ).isoformat(),
            "anthropic-ratelimit-tokens-remaining": "900",
            "anthropic-ratelimit-tokens-reset": (now + timedelta(seconds=2)).isoformat(),
        }
    minutes, seconds = divmod(RATE_LIMIT_RESET_SECONDS, 60)
    return {  # OpenAI's durations
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{minutes}m{seconds}s",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "2s",
    }


def _rate_limit_event(path: str) -> bytes:
    """A rate-limit error inside a 200 stream, as each vendor writes one."""
    if path.startswith("/api/"):  # Ollama's error lines have no type
        return b'{"error": "rate limit reached"}\n'
    if path == "/v1/messages":
        error = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limit"}}
        return f"event: error\ndata: {json.dumps(error)}\n\n".encode()
    error = {"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}}
    return f"data: {json.dumps(error)}\n\n".encode()


@dataclass
class Recorded:
    """One request the fake vendor received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    finished: bool = False
    client_went_away: bool = False
    events: list[str] = field(default_factory=list)

    def carries(self, request_id: str) -> bool:
        """Whether this request's body carries ``request_id`` (in any field)."""
        return request_id in json.dumps(self.body)


def new_request_id() -> str:
    """A unique request id to put in a request's input (``received`` finds it there)."""
    return f"rid-{uuid.uuid4().hex[:16]}"


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def _text(content: Any) -> str:
    """A message's text: a string, or the text of its content blocks (tool results too)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(_text(block.get("text", block.get("content", ""))) for block in content)
    return ""


def _sample(schema: Any) -> Any:
    """A value that matches ``schema`` (the fakes' stand-in for a model's answer)."""
    if not isinstance(schema, dict):
        return "Paris"
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("anyOf"):
        return _sample(schema["anyOf"][0])
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        required = schema.get("required", list(properties))
        return {k: _sample(v) for k, v in properties.items() if k in required}
    return {"array": [], "integer": 1, "number": 1.5, "boolean": True, "null": None}.get(
        str(kind), "Paris"
    )


def _tool_calls(vendor: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The calls the fake model makes: (tool name, arguments)."""
    tools = body.get("tools") or []
    messages = body.get("messages") or []
    if not tools or not messages:
        return []
    last = messages[-1]
    if last.get("role") == "tool" or (
        isinstance(last.get("content"), list)
        and any(b.get("type") == "tool_result" for b in last["content"])
    ):
        return []  # a tool result came back: answer in text
    if vendor == "anthropic":
        schemas = {t["name"]: t.get("input_schema") for t in tools}
        choice = body.get("tool_choice") or {"type": "auto"}
        if choice["type"] == "none":
            return []
        names = [choice["name"]] if choice["type"] == "tool" else list(schemas)
        every = choice["type"] == "any" and not choice.get("disable_parallel_tool_use")
    else:
        schemas = {t["function"]["name"]: t["function"].get("parameters") for t in tools}
        choice = body.get("tool_choice", "auto")
        if choice == "none":
            return []
        names = [choice["function"]["name"]] if isinstance(choice, dict) else list(schemas)
        every = choice == "required" and body.get("parallel_tool_calls", True)
    return [(name, _sample(schemas[name])) for name in (names if every else names[:1])]


def _strict_schema_refusal(body: dict[str, Any]) -> tuple[str, str] | None:
    """(message, param) of OpenAI's 400 for a strict function whose parameters strict
    mode cannot take (it requires ``additionalProperties: false`` and every property
    required, on the top-level object at least); None when every strict one is fine."""
    for index, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") or {}
        if not function.get("strict"):
            continue
        schema = function.get("parameters") or {}
        problem = None
        if schema.get("additionalProperties") is not False:
            problem = "'additionalProperties' is required to be supplied and to be false."
        elif set(schema.get("required") or ()) != set(schema.get("properties") or {}):
            problem = (
                "'required' is required to be supplied and to be an array including every "
                "key in properties."
            )
        if problem is not None:
            message = f"Invalid schema for function '{function.get('name')}': {problem}"
            return message, f"tools[{index}].function.parameters"
    return None


def _structured(vendor: str, body: dict[str, Any]) -> str | None:
    """The JSON answer a structured-output request gets (None: plain text)."""
    if vendor == "anthropic":
        output = (body.get("output_config") or {}).get("format")
        return json.dumps(_sample(output["schema"])) if output else None
    if vendor == "ollama":
        wanted = body.get("format")
        if wanted == "json":
            return json.dumps({"answer": "Paris"})
        return json.dumps(_sample(wanted)) if wanted else None
    wanted = body.get("response_format")
    if not wanted:
        return None
    if wanted["type"] == "json_schema":
        return json.dumps(_sample(wanted["json_schema"]["schema"]))
    return json.dumps({"answer": "Paris"})


def _fragments(text: str) -> list[str]:
    """``text`` in three pieces, as vendors stream a tool call's arguments."""
    third = max(1, len(text) // 3)
    return [text[:third], text[third : 2 * third], text[2 * third :]]


def _anthropic_input_tokens(body: dict[str, Any]) -> int:
    """Words of the system prompt, the messages and the tools' JSON: what both
    /v1/messages and /v1/messages/count_tokens report."""
    tokens = sum(len(_words(_text(m["content"]))) for m in body["messages"])
    if isinstance(body.get("system"), str):
        tokens += len(_words(body["system"]))
    if body.get("tools"):
        tokens += len(_words(json.dumps(body["tools"])))
    return tokens


def _reply(
    vendor: str, last_input: str, max_tokens: int | None, stop: list[str]
) -> tuple[list[str], str, str]:
    """(tokens, finish: stop|length|stop_sequence, matched stop sequence)."""
    text = f"Hello from {vendor}: {last_input}"
    for sequence in stop:
        if sequence in text:
            tokens = _words(text[: text.index(sequence)])
            if max_tokens is None or len(tokens) <= max_tokens:
                return tokens, "stop_sequence", sequence
    tokens = _words(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return tokens[:max_tokens], "length", ""
    return tokens, "stop", ""


class FakeVendors:
    """The server, run on its own thread and event loop."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeVendors:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/messages/count_tokens", self._anthropic_count)
        app.router.add_get("/api/tags", self._ollama_tags)
        app.router.add_post("/api/show", self._ollama_show)
        app.router.add_post("/api/chat", self._ollama)
        app.router.add_post("/api/generate", self._ollama)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def received(self, request_id: str, timeout: float = 10.0) -> Recorded:
        """The request that carries ``request_id``, once the vendor has finished with it
        (answered it, or seen the client go away). Exactly one must carry it: a second
        would be a retry behind the caller's back."""
        deadline = time.monotonic() + timeout
        while True:
            carrying = [record for record in list(self.requests) if record.carries(request_id)]
            if len(carrying) > 1:
                raise AssertionError(f"{len(carrying)} requests carry {request_id}: {carrying}")
            if carrying and carrying[0].finished:
                return carrying[0]
            if time.monotonic() > deadline:
                state = "unfinished" if carrying else "never received"
                raise AssertionError(f"request {request_id} {state} after {timeout} s")
            time.sleep(0.02)

    # -- shared ----------------------------------------------------------

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.json() if request.can_read_body else {}
        record = Recorded(request.path, dict(request.headers), body)
        self.requests.append(record)
        return record

    @staticmethod
    def _vendor(request: web.Request) -> str:
        if request.path.startswith("/api/"):
            return "ollama"
        return "anthropic" if "x-api-key" in request.headers else "openai"

    @staticmethod
    def _key(request: web.Request) -> str:
        if "x-api-key" in request.headers:
            return request.headers["x-api-key"]
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    async def _models(self, request: web.Request) -> web.Response:
        vendor = self._vendor(request)
        if self._key(request) != VALID_KEY:
            return self._auth_error(vendor, self._key(request))
        if vendor == "anthropic":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in MODELS
            ]
            return web.json_response(
                {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
            )
        listed: list[dict[str, Any]] = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in MODELS
        ]
        return web.json_response({"object": "list", "data": listed})

    def _auth_error(self, vendor: str, key: str) -> web.Response:
        if vendor == "anthropic":
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": "authentication_error", "message": f"invalid x-api-key {key}"},
            }
        else:  # OpenAI echoes (part of) the key back; this fake echoes all of it
            body = {
                "error": {
                    "message": f"Incorrect API key provided: {key}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        return web.json_response(body, status=401)

    async def _common_faults(
        self, request: web.Request, vendor: str, model: str
    ) -> web.Response | None:
        if self._key(request) != VALID_KEY and vendor != "ollama":
            return self._auth_error(vendor, self._key(request))
        if model == "fault-slow":
            await asyncio.sleep(SLOW_FIRST_BYTE_SECONDS)
        if model not in MODELS:
            return self._error(vendor, 404, "not_found_error", f"model {model!r} not found")
        if model == "fault-429":
            headers = {
                "retry-after": str(RETRY_AFTER_SECONDS),
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{RETRY_AFTER_SECONDS}s",
                "anthropic-ratelimit-requests-remaining": "0",
            }
            return self._error(vendor, 429, "rate_limit_error", "Rate limit reached", headers)
        if model == "fault-429-reset":  # the requests limit ran out; the tokens one did not
            return self._error(
                vendor, 429, "rate_limit_error", "Rate limit reached", _reset_headers(vendor)
            )
        if model == "fault-429-odd-header":
            headers = {"retry-after": "soon"}
            return self._error(vendor, 429, "rate_limit_error", "Rate limit reached", headers)
        if model == "fault-500":
            return self._error(vendor, 500, "api_error", "The server had an error")
        if model == "fault-529":
            return self._error(vendor, 529, "overloaded_error", "Overloaded")
        if model == "fault-400":
            return self._error(vendor, 400, "invalid_request_error", "Invalid value: 'seed'")
        if model == "fault-403":
            return self._error(vendor, 403, "permission_error", "No access to this model")
        if model == "fault-418":
            return self._error(vendor, 418, "teapot_error", "I'm a teapot")
        if model == "fault-context":
            message = {
                "openai": "This model's maximum context length is 8192 tokens. However, your "
                "messages resulted in 9000 tokens.",
                "anthropic": "prompt is too long: 210000 tokens > 200000 maximum",
                "ollama": "input length exceeds the context length",
            }[vendor]
            return self._error(
                vendor, 400, "invalid_request_error", message, code="context_length_exceeded"
            )
        return None

    @staticmethod
    def _error(
        vendor: str,
        status: int,
        kind: str,
        message: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> web.Response:
        if vendor == "anthropic":
            body: dict[str, Any] = {
                "type": "error",
                "error": {"type": kind, "message": message},
                "request_id": "req_fake",
            }
        elif vendor == "ollama":
            body = {"error": message}
        else:
            openai_type = {
                "not_found_error": "invalid_request_error",
                "rate_limit_error": "requests",
                "api_error": "server_error",
                "overloaded_error": "server_error",
            }.get(kind, kind)
            body = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
        return web.json_response(body, status=status, headers=headers)

    async def _stream_tokens(
        self,
        request: web.Request,
        record: Recorded,
        response: web.StreamResponse,
        model: str,
        frames: list[bytes],
        tail: list[bytes],
    ) -> web.StreamResponse:
        """Writes the token frames (with the model's faults), then the tail."""
        try:
            await response.prepare(request)
            for index, frame in enumerate(frames):
                if model == "fault-drop" and index == 2:
                    assert request.transport is not None
                    request.transport.close()  # the connection dies mid-stream
                    record.events.append("dropped")
                    record.finished = True
                    return response
                if model == "fault-ratelimit-midstream" and index == 2:
                    await response.write(_rate_limit_event(request.path))
                    record.events.append("rate limited")
                    await response.write_eof()
                    record.finished = True
                    return response
                if model == "fault-malformed" and index == 2:
                    await response.write(
                        b'data: {"id": "broken", "choices": [{"delta": {"content": "x"\n\n'
                        if not request.path.startswith("/api/")
                        else b'{"model": "fault-malformed", "message": {"content"\n'
                    )
                    record.events.append("malformed")
                    await response.write_eof()
                    record.finished = True
                    return response
                if model == "slow-stream":
                    await asyncio.sleep(0.05)
                await response.write(frame)
            for frame in tail:
                await response.write(frame)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            record.client_went_away = True
            record.finished = True
            raise
        record.finished = True
        return response

    # -- OpenAI ----------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        body = record.body
        model = str(body.get("model"))
        fault = await self._common_faults(request, "openai", model)
        if fault is not None:
            record.finished = True
            return fault
        chat = request.path.endswith("/chat/completions")
        refusal = _strict_schema_refusal(body) if chat else None
        if refusal is not None:
            record.finished = True
            message, param = refusal
            error = {
                "message": message,
                "type": "invalid_request_error",
                "param": param,
                "code": "invalid_function_parameters",
            }
            return web.json_response({"error": error}, status=400)
        if chat:
            last_input = _text(body["messages"][-1]["content"])
            prompt_tokens = sum(len(_words(_text(m["content"]))) for m in body["messages"])
        else:
            last_input = body["prompt"]
            prompt_tokens = len(_words(last_input))
        stop = body.get("stop") or []
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        stops = [stop] if isinstance(stop, str) else stop
        tokens, finish, _ = _reply("openai", last_input, limit, stops)
        finish_reason = "length" if finish == "length" else "stop"
        calls = _tool_calls("openai", body) if chat else []
        structured = _structured("openai", body)
        if calls:
            tokens, finish_reason = [], "tool_calls"
        elif structured is not None:
            tokens = _words(structured)
        if model == "slow-stream":
            tokens = [" tick"] * 200
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": "cmpl-fake",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n".encode()

        wanted = body.get("top_logprobs", 0) if chat else body.get("logprobs")
        with_logprobs = bool(body.get("logprobs")) or (not chat and wanted is not None)

        def logprobs_of(index: int, text: str) -> dict[str, Any] | None:
            """The logprobs of token ``index``: -0.1 per position, one alternative ' alt'."""
            if not text or not with_logprobs:
                return None
            value = -0.1 * (index + 1)
            alternatives = [(text, value), (" alt", value - 2)][: int(wanted or 0)]
            if chat:
                top = [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alternatives
                ]
                entry = {
                    "token": text,
                    "logprob": value,
                    "bytes": list(text.encode()),
                    "top_logprobs": top,
                }
                return {"content": [entry], "refusal": None}
            return {
                "tokens": [text],
                "token_logprobs": [value],
                "top_logprobs": [dict(alternatives)],
                "text_offset": [0],
            }

        def piece(text: str, finish: str | None = None, index: int = 0) -> dict[str, Any]:
            logprobs = logprobs_of(index, text)
            if chat:
                delta: dict[str, Any] = {"content": text} if text else {}
                return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

        frames = []
        if chat:
            frames.append(
                chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                        }
                    ]
                )
            )
        frames += [chunk([piece(t, index=i)]) for i, t in enumerate(tokens)]
        for number, (name, arguments) in enumerate(calls):
            start = {"index": number, "id": f"call_fake_{number}", "type": "function"}
            start["function"] = {"name": name, "arguments": ""}
            frames.append(chunk([{"index": 0, "delta": {"tool_calls": [start]}}]))
            for fragment in _fragments(json.dumps(arguments)):
                more = {"index": number, "function": {"arguments": fragment}}
                frames.append(chunk([{"index": 0, "delta": {"tool_calls": [more]}}]))
        if calls:  # a name and three argument fragments each
            usage["completion_tokens"] = 4 * len(calls)
            usage["total_tokens"] = prompt_tokens + usage["completion_tokens"]
        tail = [chunk([piece("", finish_reason)])]
        if (body.get("stream_options") or {}).get("include_usage"):
            tail.append(chunk([], usage))
        tail.append(b"data: [DONE]\n\n")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "x-request-id": "req_fake"}
        )
        return await self._stream_tokens(request, record, response, model, frames, tail)

    # -- Anthropic -------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        body = record.body
        model = str(body.get("model"))
        fault = await self._common_faults(request, "anthropic", model)
        if fault is not None:
            record.finished = True
            return fault
        if "max_tokens" not in body:
            record.finished = True
            return self._error(
                "anthropic", 400, "invalid_request_error", "max_tokens: Field required"
            )
        messages = body["messages"]
        prompt_tokens = _anthropic_input_tokens(body)
        prefill = _text(messages[-1]["content"]) if messages[-1]["role"] == "assistant" else ""
        last_input = next(_text(m["content"]) for m in reversed(messages) if m["role"] == "user")
        tokens, finish, matched = _reply(
            "anthropic", last_input, body["max_tokens"], body.get("stop_sequences") or []
        )
        if prefill:  # continue after the prefilled text
            text = "".join(tokens)
            tokens = _words(text[len(prefill) :]) if text.startswith(prefill) else tokens
        if model == "slow-stream":
            tokens = [" tick"] * 200
        stop_reason = {
            "stop": "end_turn",
            "length": "max_tokens",
            "stop_sequence": "stop_sequence",
        }[finish]
        calls = _tool_calls("anthropic", body)
        structured = _structured("anthropic", body)
        if calls:
            tokens, stop_reason, matched = [], "tool_use", ""
        elif structured is not None:
            tokens = _words(structured)

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
        }
        head = [
            event("message_start", {"type": "message_start", "message": message}),
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            event("ping", {"type": "ping"}),
        ]
        deltas = [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": t},
                },
            )
            for t in tokens
        ]
        if calls:  # the (empty) text block ends; a tool_use block per call follows
            deltas.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        for number, (name, arguments) in enumerate(calls, start=1):
            block = {"type": "tool_use", "id": f"toolu_fake_{number}", "name": name, "input": {}}
            deltas.append(
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": number, "content_block": block},
                )
            )
            fragments = _fragments(json.dumps(arguments)) if arguments else []
            for fragment in fragments:
                delta = {"type": "input_json_delta", "partial_json": fragment}
                deltas.append(
                    event(
                        "content_block_delta",
                        {"type": "content_block_delta", "index": number, "delta": delta},
                    )
                )
            stop = {"type": "content_block_stop", "index": number}
            deltas.append(event("content_block_stop", stop))
        if model == "fault-overloaded-midstream":
            deltas.insert(
                2,
                event(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                ),
            )
            deltas = deltas[:3]
            tail: list[bytes] = []
        else:
            tail = [
                *(
                    []
                    if calls
                    else [event("content_block_stop", {"type": "content_block_stop", "index": 0})]
                ),
                event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": matched or None},
                        "usage": {"output_tokens": len(tokens) or 4 * len(calls)},
                    },
                ),
                event("message_stop", {"type": "message_stop"}),
            ]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": "req_fake"}
        )
        if model == "fault-malformed":
            deltas = [head[0], head[1], b"event: content_block_delta\ndata: {not json\n\n"]
            head, tail = [], []
            return await self._stream_tokens(request, record, response, "ok", deltas, tail)
        return await self._stream_tokens(request, record, response, model, head + deltas, tail)

    async def _anthropic_count(self, request: web.Request) -> web.Response:
        record = await self._record(request)
        body = record.body
        record.finished = True
        fault = await self._common_faults(request, "anthropic", str(body.get("model")))
        if fault is not None:
            return fault
        return web.json_response({"input_tokens": _anthropic_input_tokens(body)})

    # -- Ollama ----------------------------------------------------------

    async def _ollama_tags(self, request: web.Request) -> web.Response:
        tags = [
            {
                "name": f"{m}:latest",
                "model": f"{m}:latest",
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1000,
                "digest": "0" * 64,
                "details": {
                    "family": "llama",
                    "parameter_size": "1B",
                    "quantization_level": "Q4_0",
                },
            }
            for m in MODELS
        ]
        return web.json_response({"models": tags})

    async def _ollama_show(self, request: web.Request) -> web.Response:
        name = str((await request.json()).get("model", "")).removesuffix(":latest")
        if name not in MODELS:
            return self._error("ollama", 404, "not_found_error", f"model '{name}' not found")
        info = {"general.architecture": "llama", "llama.context_length": OLLAMA_CONTEXT_LENGTH}
        return web.json_response(
            {"modelfile": "", "details": {"family": "llama"}, "model_info": info}
        )

    async def _ollama(self, request: web.Request) -> web.StreamResponse:
        record = await self._record(request)
        body = record.body
        model = str(body.get("model")).removesuffix(":latest")
        fault = await self._common_faults(request, "ollama", model)
        if fault is not None:
            record.finished = True
            return fault
        options = body.get("options") or {}
        chat = request.path == "/api/chat"
        if chat:
            messages = body["messages"]
            answered = messages[-1]["role"] == "tool"
            last_input = next(
                m["content"] for m in reversed(messages) if m["role"] in ("user", "tool")
            )
            last_input = messages[-1]["content"] if answered else last_input
            prompt_tokens = sum(len(_words(m["content"])) for m in messages)
        else:
            last_input = body["prompt"]
            prompt_tokens = len(_words(last_input))
        tokens, finish, _ = _reply(
            "ollama", last_input, options.get("num_predict"), options.get("stop") or []
        )
        if model == "slow-stream":
            tokens = [" tick"] * 200
        calls = _tool_calls("ollama", body) if chat else []
        structured = _structured("ollama", body)
        if calls:
            tokens = []
        elif structured is not None:
            tokens = _words(structured)

        def line(text: str, done: bool = False) -> bytes:
            item: dict[str, Any] = {"model": body["model"], "created_at": "2025-01-01T00:00:00Z"}
            if chat:
                item["message"] = {"role": "assistant", "content": text}
            else:
                item["response"] = text
            item["done"] = done
            if done:
                item.update(
                    done_reason="length" if finish == "length" else "stop",
                    total_duration=1000,
                    prompt_eval_count=prompt_tokens,
                    eval_count=len(tokens),
                )
            return (json.dumps(item) + "\n").encode()

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        frames = [line(t) for t in tokens]
        if calls:  # Ollama sends whole calls, arguments as objects, in one message
            item = json.loads(line(""))
            item["message"]["tool_calls"] = [
                {"function": {"name": name, "arguments": arguments}} for name, arguments in calls
            ]
            frames.append((json.dumps(item) + "\n").encode())
        return await self._stream_tokens(request, record, response, model, frames, [line("", True)])


def backend_config(kind: str, url: str, key_file: Path, **options: Any) -> dict[str, Any]:
    """A model server config for ``kind`` pointed at the fake vendor at ``url``."""
    models: list[dict[str, Any]] = [{"id": m} for m in MODELS]
    models.append({"id": "missing", "provider_model": "no-such-model"})
    if kind != "anthropic":
        models.append(
            {"id": "ok-text", "provider_model": "ok", "capabilities": ["completion", "streaming"]}
        )
    backend: dict[str, Any] = {
        "kind": kind,
        "base_url": f"{url}/v1" if kind == "openai" else url,
        "api_key_file": str(key_file),
        "models": models,
        "unhealthy_after_failures": 1000,  # health has its own tests
        **options,
    }
    return {"backend": backend}
