"""OpenTelemetry tracing for the services, configured by the standard OTEL_* variables.

Tracing is on when an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), or ``OTEL_TRACES_EXPORTER=console``
(spans printed to stdout, for debugging), and neither ``OTEL_SDK_DISABLED=true``
nor ``OTEL_TRACES_EXPORTER=none`` is set. Otherwise nothing is set up and the
request paths skip tracing entirely. OTLP goes over gRPC unless
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` says
``http/protobuf``. Service name, resource attributes, sampler, headers, timeouts
and TLS come from the usual ``OTEL_*`` variables. Needs the ``server`` extra.

Prompt and completion text are recorded only when
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from switchyard_common.configfile import ConfigError

_provider: Any = None


def enabled() -> bool:
    """Whether this process exports traces."""
    return _provider is not None


def capture_content() -> bool:
    """Whether operators opted in to prompt and completion text in spans."""
    value = os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
    return value.lower() == "true"


def configure(default_service_name: str) -> bool:
    """Sets up OTLP export if the environment asks for it; returns whether it did."""
    global _provider
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = _exporter(env)
    if exporter is None:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: default_service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def _exporter(env: Mapping[str, str]) -> Any:
    """The span exporter the environment asks for, or None for no tracing."""
    chosen = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if chosen == "none":
        return None
    if chosen == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if chosen != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER={chosen!r}: expected otlp, console or none")
    if not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter()
    raise ConfigError(f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf")


def shutdown() -> None:
    """Flushes and stops the exporter (call on exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def tracer(name: str) -> Any:
    from opentelemetry import trace

    return trace.get_tracer(name)


def extract(metadata: Iterable[Any] | None) -> Any:
    """The W3C trace context carried in gRPC metadata (an OpenTelemetry Context)."""
    from opentelemetry import propagate

    carrier = {str(key): value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier)


def inject(metadata: Iterable[tuple[str, Any]], span: Any) -> tuple[tuple[str, Any], ...]:
    """``metadata`` with the trace context replaced by ``span``'s (for an outgoing call)."""
    from opentelemetry import propagate, trace

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    kept = tuple((k, v) for k, v in metadata if k not in carrier)
    return kept + tuple(carrier.items())


def rpc_attributes(service: str, method: str) -> dict[str, str]:
    """The OpenTelemetry RPC conventions' attributes of a gRPC call to ``service/method``."""
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def start_server_span(
    tracer: Any, name: str, metadata: Iterable[Any] | None, attributes: Mapping[str, Any]
) -> Any:
    """A request's SERVER span, continuing the caller's W3C trace context carried in
    ``metadata`` (both services open their requests' spans this way)."""
    from opentelemetry.trace import SpanKind

    return tracer.start_span(
        name, context=extract(metadata), kind=SpanKind.SERVER, attributes=dict(attributes)
    )


def genai_attributes(
    *,
    operation: str,
    provider: str,
    request_model: str,
    sampling: Mapping[str, float | int | None],
) -> dict[str, Any]:
    """GenAI semantic-convention attributes known when a request starts."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
    }
    for name, value in sampling.items():
        if value is not None:
            attributes[f"gen_ai.request.{name}"] = value
    return attributes
