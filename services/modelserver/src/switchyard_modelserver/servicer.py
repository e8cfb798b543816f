"""The LLMService servicer: protobuf in, backend calls, protobuf out. Nothing else.

Validation lives in ``validation``, queueing in ``admission``, model lookup in
``catalog``; every failure becomes a status in :func:`status_boundary`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_common import logs, tracing
from switchyard_common.status import StatusError, abort
from switchyard_modelserver import capability_check, metrics, validation
from switchyard_modelserver.admission import ModelGate
from switchyard_modelserver.backends.base import Backend
from switchyard_modelserver.catalog import ModelCatalog
from switchyard_modelserver.coalescing import coalesced
from switchyard_modelserver.config import InputLimits
from switchyard_modelserver.domain import (
    Capability,
    Delta,
    Finish,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelState,
    PromptCounted,
    ToolCallDelta,
)
from switchyard_modelserver.model_defaults import ModelDefaults
from switchyard_modelserver.validation import UnreadableRequest

log = logging.getLogger("switchyard.modelserver.requests")


@functools.cache
def _tracer() -> Any:
    return tracing.tracer("switchyard.modelserver")


Context = grpc.aio.ServicerContext[Any, Any]

_FINISH = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
}
_CAPABILITY = {
    Capability.COMPLETION: pb.CAPABILITY_COMPLETION,
    Capability.CHAT: pb.CAPABILITY_CHAT,
    Capability.STREAMING: pb.CAPABILITY_STREAMING,
    Capability.LOGPROBS: pb.CAPABILITY_LOGPROBS,
    Capability.TOOLS: pb.CAPABILITY_TOOLS,
    Capability.JSON_OUTPUT: pb.CAPABILITY_JSON_OUTPUT,
    Capability.GRAMMAR_OUTPUT: pb.CAPABILITY_GRAMMAR_OUTPUT,
    Capability.COUNT_TOKENS: pb.CAPABILITY_COUNT_TOKENS,
}
_STATUS = {
    ModelState.LOADING: pb.MODEL_STATUS_LOADING,
    ModelState.READY: pb.MODEL_STATUS_READY,
    ModelState.UNAVAILABLE: pb.MODEL_STATUS_UNAVAILABLE,
}


@dataclass
class _Outcome:
    """What one request did, for its log line."""

    method: str
    started: float = field(default_factory=time.monotonic)
    model: str = "-"
    resolved: bool = False  # model is a served id (a bounded metrics label)
    rpc_span: Any = None  # the RPC's SERVER span when tracing is on
    span: Any = None  # its GenAI inference child span (current while handling)
    output: list[str] | None = None  # completion text, only when content capture is on
    code: str = "OK"
    finish: str = "-"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None

    def end_spans(self) -> None:
        from opentelemetry.trace import Status, StatusCode

        status = Status(StatusCode.ERROR, self.code) if self.code != "OK" else None
        if self.span is not None:
            self._end_inference_span(self.span, status)
        rpc_span = self.rpc_span
        rpc_span.set_attribute("rpc.grpc.status_code", grpc.StatusCode[self.code].value[0])
        if status is not None:
            rpc_span.set_status(status)
        rpc_span.end()

    def _end_inference_span(self, span: Any, status: Any) -> None:
        if self.resolved:
            span.set_attribute("gen_ai.response.model", self.model)
        span.set_attribute("gen_ai.usage.input_tokens", self.prompt_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self.completion_tokens)
        if self.finish != "-":
            span.set_attribute("gen_ai.response.finish_reasons", [self.finish])
        if self.first_token_at is not None:
            ttft_ms = (self.first_token_at - self.started) * 1e3
            span.set_attribute("switchyard.time_to_first_token_ms", ttft_ms)
        if self.output is not None:
            text = "".join(self.output)
            output = [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": text}],
                    "finish_reason": self.finish,
                }
            ]
            span.set_attribute("gen_ai.output.messages", json.dumps(output))
        if status is not None:
            span.set_attribute("error.type", self.code)
            span.set_status(status)
        span.end()

    def log(self) -> None:
        now = time.monotonic()
        if self.rpc_span is not None:
            self.end_spans()
        metrics.record_request(
            method=self.method,
            model=self.model if self.resolved else "unknown",
            code=self.code,
            duration=now - self.started,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            time_to_first_token=(
                None if self.first_token_at is None else self.first_token_at - self.started
            ),
        )
        ttft = (
            None
            if self.first_token_at is None
            else round((self.first_token_at - self.started) * 1e3, 1)
        )
        fields = {
            "method": self.method,
            # A name the caller made up is escaped: it must not forge log lines.
            "model": self.model if self.resolved else _printable(self.model),
            "code": self.code,
            "finish": self.finish,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": ttft,
            "total_ms": round((now - self.started) * 1e3, 1),
            **logs.trace_ids(self.rpc_span),
        }
        level = logging.ERROR if self.code == "INTERNAL" else logging.INFO
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "request " + " ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items()),
            extra={"fields": fields},
        )


def _printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])


def _messages_json(turns: list[tuple[str, str]]) -> str:
    """Messages in the GenAI conventions' JSON shape (for opted-in content capture)."""
    return json.dumps(
        [{"role": role, "parts": [{"type": "text", "content": text}]} for role, text in turns]
    )


@asynccontextmanager
async def status_boundary(context: Context, outcome: _Outcome) -> AsyncIterator[None]:
    """The one place where exceptions become gRPC statuses (and requests get logged)."""
    try:
        yield
    except StatusError as error:
        outcome.code = error.code.name
        await abort(context, error)
    except TimeoutError:
        outcome.code = "DEADLINE_EXCEEDED"
        await abort(
            context,
            StatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline exceeded after {outcome.completion_tokens} generated tokens",
            ),
        )
    except asyncio.CancelledError:
        outcome.code = "CANCELLED"
        raise
    except Exception:
        if context.done():  # the call already ended (e.g. a write after the client left)
            outcome.code = "CANCELLED"
            raise
        outcome.code = "INTERNAL"
        log.exception("unexpected error in %s for model %s", outcome.method, outcome.model)
        await abort(
            context,
            StatusError(
                grpc.StatusCode.INTERNAL, "internal error in the model server; see its log"
            ),
        )
    finally:
        outcome.log()


@asynccontextmanager
async def _current(span: Any) -> AsyncIterator[None]:
    """Makes ``span`` current for the handler, so every log line (and any child
    span, e.g. an HTTP call) carries its trace; a no-op without tracing."""
    if span is None:
        yield
        return
    from opentelemetry import trace

    with trace.use_span(span, end_on_exit=False):
        yield


def _deadline(context: Context) -> asyncio.Timeout:
    """The caller's deadline as a timeout around the whole handler, so that the
    engine stops when it passes (not only the bytes on the wire)."""
    return asyncio.timeout(context.time_remaining())


def _with_deadline(request: GenerationRequest, context: Context) -> GenerationRequest:
    """The request with the caller's deadline, which cloud backends use as their HTTP timeout."""
    remaining = context.time_remaining()
    if remaining is None:
        return request
    return dataclasses.replace(request, deadline=time.monotonic() + remaining)


def _delta_message(delta: Delta, include_token_ids: bool) -> pb.StreamGenerateResponse:
    message = pb.StreamGenerateResponse(text=delta.text)
    for piece in delta.tool_calls:
        message.tool_calls.add(
            index=piece.index, id=piece.id, name=piece.name, arguments=piece.arguments
        )
    if delta.logprobs:
        message.tokens.extend(_tokens(delta))
    elif include_token_ids:
        message.tokens.extend(pb.Token(id=token_id) for token_id in delta.token_ids)
    return message


def _tokens(delta: Delta) -> list[pb.Token]:
    """A delta's per-token details (ids, texts, logprobs) for the response's ``tokens``."""
    return [
        pb.Token(
            id=token.id,
            text=token.text,
            logprob=token.logprob,
            top_logprobs=[pb.TopLogprob(id=i, text=t, logprob=lp) for i, t, lp in token.top],
        )
        for token in delta.logprobs
    ]


def _tool_calls(pieces: list[ToolCallDelta]) -> list[pb.ToolCall]:
    """Streamed tool call pieces joined into whole calls, in index order."""
    calls: dict[int, pb.ToolCall] = {}
    for piece in pieces:
        call = calls.setdefault(piece.index, pb.ToolCall())
        if piece.id:
            call.id = piece.id
        if piece.name:
            call.name = piece.name
        call.arguments += piece.arguments
    return [calls[index] for index in sorted(calls)]


def _defaults_message(defaults: ModelDefaults | None) -> pb.ModelDefaults | None:
    if defaults is None:
        return None
    sampling = pb.SamplingParams(stop=defaults.stop)
    for name in ("temperature", "top_p", "max_tokens"):
        value = getattr(defaults, name)
        if value is not None:
            setattr(sampling, name, value)
    return pb.ModelDefaults(
        sampling=sampling,
        system_prompt=defaults.system_prompt or "",
        chat_template_override=defaults.chat_template is not None,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class InFlight:
    """Counts generation requests in progress, so a drain knows when they are done."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        if self.draining:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "model server is shutting down; retry on another replica",
                reason="SHUTTING_DOWN",
            )
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def idle(self) -> None:
        """Returns once no request is in progress."""
        await self._idle.wait()


class LLMServicer(pb_grpc.LLMServiceServicer):
    """Serves switchyard.v1.LLMService from one backend."""

    def __init__(
        self,
        backend: Backend,
        catalog: ModelCatalog,
        gates: dict[str, ModelGate],
        in_flight: InFlight,
        coalesce_seconds: float = 0.0,
        limits: InputLimits = validation.DEFAULT_LIMITS,
        max_tokens: dict[str, int] | None = None,
        defaults: dict[str, ModelDefaults] | None = None,
    ) -> None:
        self._defaults = defaults or {}  # per model id
        self._coalesce_seconds = coalesce_seconds
        self._limits = limits
        self._max_tokens = max_tokens or {}  # ceiling per model id
        self._backend = backend
        self._catalog = catalog
        self._gates = gates
        self._in_flight = in_flight

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: pb.GenerateRequest | UnreadableRequest, context: Context
    ) -> pb.GenerateResponse:
        outcome = self._outcome("Generate", request, context)
        async with (
            _current(outcome.span or outcome.rpc_span),
            status_boundary(context, outcome),
            self._in_flight.track(),
            _deadline(context),
        ):
            parts: list[str] = []
            tokens: list[pb.Token] = []
            calls: list[ToolCallDelta] = []
            valid = _with_deadline(validation.generation_request(request, self._limits), context)
            events = self._events(valid, outcome)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        parts.append(event.text)
                        if event.logprobs:
                            tokens += _tokens(event)
                        calls += event.tool_calls
                    else:
                        final = self._final_message(event, outcome)
                        return pb.GenerateResponse(
                            text="".join(parts),
                            finish_reason=final.finish_reason,
                            stop_sequence=final.stop_sequence,
                            usage=final.usage,
                            model=final.model,
                            backend=final.backend,
                            timings=final.timings,
                            tokens=tokens,
                            tool_calls=_tool_calls(calls),
                        )
        raise AssertionError("unreachable: the boundary aborts or a Finish returns")

    async def StreamGenerate(  # type: ignore[override]  # noqa: N802 - writes via context
        self, request: pb.StreamGenerateRequest | UnreadableRequest, context: Context
    ) -> None:
        outcome = self._outcome("StreamGenerate", request, context)
        async with (
            _current(outcome.span or outcome.rpc_span),
            status_boundary(context, outcome),
            self._in_flight.track(),
            _deadline(context),
        ):
            valid = _with_deadline(validation.generation_request(request, self._limits), context)
            with_ids = valid.include_token_ids
            events = coalesced(self._events(valid, outcome), self._coalesce_seconds)
            async with aclosing(events):
                async for event in events:
                    if isinstance(event, Delta):
                        if (
                            event.text
                            or (with_ids and event.token_ids)
                            or event.logprobs
                            or event.tool_calls
                        ):
                            await context.write(_delta_message(event, with_ids))
                    else:
                        await context.write(self._final_message(event, outcome))

    def _outcome(
        self,
        method: str,
        request: pb.GenerateRequest | pb.StreamGenerateRequest | UnreadableRequest,
        context: Context,
    ) -> _Outcome:
        outcome = _Outcome(method)
        readable = None if isinstance(request, UnreadableRequest) else request
        if readable is not None:
            model_id = self._catalog.lookup(readable.model)
            outcome.model = model_id or readable.model or "-"
            outcome.resolved = model_id is not None
        if tracing.enabled():
            outcome.rpc_span = self._start_rpc_span(method, context)
            if readable is not None:  # an unreadable request has only the RPC span
                outcome.span = self._start_inference_span(readable, outcome.rpc_span)
                if tracing.capture_content() and outcome.span.is_recording():
                    outcome.output = []
        return outcome

    def _start_rpc_span(self, method: str, context: Context) -> Any:
        """The SERVER span of the call, continuing the caller's W3C trace context."""
        from opentelemetry.trace import SpanKind

        return _tracer().start_span(
            f"switchyard.v1.LLMService/{method}",
            context=tracing.extract(context.invocation_metadata()),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": "switchyard.v1.LLMService",
                "rpc.method": method,
            },
        )

    def _start_inference_span(
        self, request: pb.GenerateRequest | pb.StreamGenerateRequest, parent: Any
    ) -> Any:
        """The GenAI inference span (OpenTelemetry GenAI conventions): a CLIENT span
        when the backend calls a remote provider, INTERNAL for an in-process engine."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        operation = "chat" if len(request.messages) else "text_completion"
        sampling = request.sampling
        attributes = tracing.genai_attributes(
            operation=operation,
            provider=self._backend.kind,
            request_model=request.model,
            sampling={
                name: getattr(sampling, name) if sampling.HasField(name) else None
                for name in ("temperature", "top_p", "top_k", "max_tokens")
            },
        )
        if tracing.capture_content():
            turns = [("user", request.prompt)] if request.prompt else []
            turns += [(m.role, m.content) for m in request.messages]
            attributes["gen_ai.input.messages"] = _messages_json(turns)
        return _tracer().start_span(
            f"{operation} {request.model}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT if self._backend.remote else SpanKind.INTERNAL,
            attributes=attributes,
        )

    def _with_defaults(self, request: GenerationRequest) -> GenerationRequest:
        defaults = self._defaults.get(request.model)
        return request if defaults is None else defaults.apply(request)

    async def CountTokens(  # noqa: N802 - gRPC method name
        self, request: pb.CountTokensRequest | UnreadableRequest, context: Context
    ) -> pb.CountTokensResponse:
        outcome = _Outcome("CountTokens")
        async with (
            status_boundary(context, outcome),
            self._in_flight.track(),
            _deadline(context),
        ):
            valid = validation.count_request(request, self._limits)
            outcome.model = valid.model
            model_id = self._catalog.resolve(valid.model)
            outcome.model, outcome.resolved = model_id, True
            counted = self._with_defaults(dataclasses.replace(valid, model=model_id))
            tokens = await self._backend.count_tokens(counted)
            outcome.prompt_tokens = tokens
            card = self._catalog.card(model_id)
            return pb.CountTokensResponse(
                prompt_tokens=tokens,
                model=model_id,
                backend=self._backend.kind,
                context_length=card.context_length,
            )
        raise AssertionError("unreachable: the boundary aborts or the count returns")

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = []
        for entry in self._catalog.entries():
            ready = entry.state is ModelState.READY
            models.append(
                pb.Model(
                    id=entry.card.id,
                    aliases=entry.card.aliases,
                    backend=self._backend.kind,
                    context_length=entry.card.context_length,
                    capabilities=sorted(_CAPABILITY[c] for c in entry.card.capabilities),
                    status=_STATUS[entry.state],
                    healthy_replicas=1 if ready else 0,
                    total_replicas=1,
                    defaults=_defaults_message(self._defaults.get(entry.card.id)),
                )
            )
        return pb.ListModelsResponse(models=models)

    async def _events(
        self, request: GenerationRequest, outcome: _Outcome
    ) -> AsyncGenerator[GenerationEvent, None]:
        outcome.model = request.model
        model_id = self._catalog.resolve(request.model)
        outcome.model = model_id
        outcome.resolved = True
        capability_check.check(self._catalog.card(model_id), request, self._backend.kind)
        resolved = validation.max_tokens_ceiling(
            self._with_defaults(dataclasses.replace(request, model=model_id)),
            self._max_tokens.get(model_id, self._limits.max_tokens),
        )
        async with self._gates[model_id].admit():
            events = self._backend.generate(resolved)
            try:
                async for event in events:
                    if isinstance(event, PromptCounted):
                        outcome.prompt_tokens = event.tokens
                        continue
                    if isinstance(event, Delta):
                        if event.tokens and outcome.first_token_at is None:
                            outcome.first_token_at = time.monotonic()
                            if outcome.span is not None:
                                outcome.span.add_event("gen_ai.first_token")
                        if outcome.output is not None:
                            outcome.output.append(event.text)
                        outcome.completion_tokens += event.tokens
                    else:
                        outcome.prompt_tokens = event.prompt_tokens
                        outcome.completion_tokens = event.completion_tokens
                        outcome.finish = event.reason.value
                    yield event
            finally:
                await events.aclose()

    def _final_message(self, finish: Finish, outcome: _Outcome) -> pb.StreamGenerateResponse:
        now = time.monotonic()
        first = outcome.first_token_at if outcome.first_token_at is not None else now
        return pb.StreamGenerateResponse(
            finish_reason=_FINISH[finish.reason],
            stop_sequence=finish.stop_sequence,
            usage=pb.Usage(
                prompt_tokens=finish.prompt_tokens, completion_tokens=finish.completion_tokens
            ),
            model=outcome.model,
            backend=self._backend.kind,
            timings=pb.Timings(
                time_to_first_token=_duration(first - outcome.started),
                total=_duration(now - outcome.started),
            ),
        )
