"""The router's spans: one SERVER span per request, one CLIENT span per attempt.

OpenTelemetry is imported only when tracing is on (``tracing.enabled()``): without
it, none of this runs.
"""

from __future__ import annotations

import functools
from typing import Any

from switchyard_common import tracing
from switchyard_router.front import Inbound, Metadata
from switchyard_router.metrics import RequestRecord
from switchyard_router.picker import EndpointView, Pick


@functools.cache
def _tracer() -> Any:
    return tracing.tracer("switchyard.router")


def start_request_span(record: RequestRecord, inbound: Inbound, model: str) -> Any:
    """The request's SERVER span, made current for the rest of the handler so that
    its log lines carry the trace (each request runs in its own task and context)."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    span = tracing.start_server_span(
        _tracer(),
        f"{record.method} {model}",
        inbound.metadata,
        {**inbound.span_attributes, "gen_ai.request.model": model},
    )
    otel_context.attach(trace.set_span_in_context(span))
    return span


def start_attempt_span(
    record: RequestRecord, pick: Pick[EndpointView], attempt: int, metadata: Metadata
) -> tuple[Any, Metadata]:
    """A child span for one attempt, and metadata carrying it to the model server."""
    if record.span is None:
        return None, metadata
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    span = _tracer().start_span(
        f"attempt {attempt + 1} {pick.endpoint.address}",
        context=trace.set_span_in_context(record.span),
        kind=SpanKind.CLIENT,
        attributes={
            "switchyard.attempt": attempt + 1,
            "switchyard.cluster": pick.cluster,
            "server.address": pick.endpoint.address,
            "gen_ai.request.model": pick.model,
        },
    )
    return span, tracing.inject(metadata, span)


def end_attempt_span(span: Any, outcome: str, received: int | None = None) -> None:
    """Ends an attempt's span with its outcome (a status code name, or OK) and, for a
    stream, the messages it relayed."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("switchyard.outcome", outcome)
    if received is not None:
        span.set_attribute("switchyard.messages_relayed", received)
    if outcome != "OK":
        span.set_status(Status(StatusCode.ERROR, outcome))
    span.end()
