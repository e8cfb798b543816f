"""One generation request's record: its spans, its metrics and its access-log line.

A :class:`RequestTelemetry` starts when a Generate or StreamGenerate call
arrives (with tracing on: the RPC's SERVER span, continuing the caller's W3C
context, and its GenAI inference span, following the OpenTelemetry GenAI
conventions), follows the backend's events (usage, time to first token, finish
reason) and ends once, in the status boundary, with
:meth:`RequestTelemetry.end_spans_count_and_log`: the spans end, the Prometheus
metrics count the request and the access log gets its line.

Prompt and completion text reach a span only when the operator opts in
(``tracing.capture_content``); a model name the caller made up is escaped
before it reaches the log, and is ``unknown`` in metrics (a bounded label).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common import logs, tracing
from switchyard_modelserver import metrics
from switchyard_modelserver.domain import BackendEvent, Delta, PromptCounted

log = logging.getLogger("switchyard.modelserver.requests")
_SERVICE = pb.DESCRIPTOR.services_by_name["LLMService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]


@functools.cache
def _tracer() -> Any:
    return tracing.tracer("switchyard.modelserver")


@dataclass
class RequestTelemetry:
    """What one request did, for its spans, its metrics and its access-log line."""

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
    cached_prompt_tokens: int = 0
    first_token_at: float | None = None

    @classmethod
    def start(
        cls,
        method: str,
        request: pb.GenerateRequest | pb.StreamGenerateRequest | None,
        context: Context,
        *,
        served_id: str | None,
        provider: str,
        remote: bool,
    ) -> RequestTelemetry:
        """Starts the record of a call (``request`` None: its bytes did not parse);
        ``served_id`` is the model id the request's name resolves to, if any."""
        telemetry = cls(method)
        if request is not None:
            telemetry.model = served_id or request.model or "-"
            telemetry.resolved = served_id is not None
        if tracing.enabled():
            telemetry.rpc_span = _start_rpc_span(method, context)
            if request is not None:  # an unreadable request has only the RPC span
                telemetry.span = _start_inference_span(
                    request, telemetry.rpc_span, provider, remote
                )
                if tracing.capture_content() and telemetry.span.is_recording():
                    telemetry.output = []
        return telemetry

    @asynccontextmanager
    async def current(self) -> AsyncIterator[None]:
        """Makes the request's span current for the handler, so every log line (and
        any child span, e.g. an HTTP call) carries its trace; a no-op without tracing."""
        span = self.span or self.rpc_span
        if span is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(span, end_on_exit=False):
            yield

    def resolved_to(self, model_id: str) -> None:
        """The request's model name names the served model ``model_id``."""
        self.model = model_id
        self.resolved = True

    def observe(self, event: BackendEvent) -> None:
        """Takes note of a backend event: usage, the first token, the finish reason."""
        if isinstance(event, PromptCounted):
            self.prompt_tokens = event.tokens
        elif isinstance(event, Delta):
            if event.tokens and self.first_token_at is None:
                self.first_token_at = time.monotonic()
                if self.span is not None:
                    self.span.add_event("gen_ai.first_token")
            if self.output is not None:
                self.output.append(event.text)
            self.completion_tokens += event.tokens
        else:
            self.prompt_tokens = event.prompt_tokens
            self.completion_tokens = event.completion_tokens
            self.cached_prompt_tokens = event.cached_prompt_tokens
            self.finish = event.reason.value

    def end_spans_count_and_log(self) -> None:
        """Ends the spans, counts the request in the metrics and writes its access-log
        line: once per call, when it ends (however it ends)."""
        now = time.monotonic()
        if self.rpc_span is not None:
            self._end_spans()
        metrics.record_request(
            method=self.method,
            model=self.model if self.resolved else "unknown",
            code=self.code,
            duration=now - self.started,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
            time_to_first_token=(
                None if self.first_token_at is None else self.first_token_at - self.started
            ),
        )
        self._write_access_log(now)

    def _end_spans(self) -> None:
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
        if self.cached_prompt_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", self.cached_prompt_tokens)
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

    def _write_access_log(self, now: float) -> None:
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
            "cached_prompt_tokens": self.cached_prompt_tokens,
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


def _start_rpc_span(method: str, context: Context) -> Any:
    """The SERVER span of the call, continuing the caller's W3C trace context."""
    return tracing.start_server_span(
        _tracer(),
        f"{_SERVICE}/{method}",
        context.invocation_metadata(),
        tracing.rpc_attributes(_SERVICE, method),
    )


def _start_inference_span(
    request: pb.GenerateRequest | pb.StreamGenerateRequest, parent: Any, provider: str, remote: bool
) -> Any:
    """The GenAI inference span (OpenTelemetry GenAI conventions): a CLIENT span
    when the backend calls a remote provider, INTERNAL for an in-process engine."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    operation = "chat" if len(request.messages) else "text_completion"
    sampling = request.sampling
    attributes = tracing.genai_attributes(
        operation=operation,
        provider=provider,
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
        kind=SpanKind.CLIENT if remote else SpanKind.INTERNAL,
        attributes=attributes,
    )


def _printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters escaped, cut to ``limit`` characters."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])


def _messages_json(turns: list[tuple[str, str]]) -> str:
    """Messages in the GenAI conventions' JSON shape (for opted-in content capture)."""
    return json.dumps(
        [{"role": role, "parts": [{"type": "text", "content": text}]} for role, text in turns]
    )
