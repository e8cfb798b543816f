"""The HTTP client every provider uses: the caller's deadline as its timeout,
no retries of its own, and, with tracing on, one CLIENT span per HTTP request
whose W3C context goes out in the request's headers."""

from __future__ import annotations

import time
from typing import Any

import httpx2

from switchyard_common import tracing
from switchyard_modelserver.backends.cloud.options import CloudOptions
from switchyard_modelserver.domain import GenerationRequest


class TracedTransport(httpx2.AsyncBaseTransport):
    """One CLIENT span per HTTP request, its W3C context sent in the headers.

    The span is a child of whatever span is current (the model server's request
    span). It ends when the response headers arrive (a stream's body is the
    model server's span). Only method, URL without query or credentials, host,
    port and status are recorded: never headers (the API key) or bodies (the prompt).
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport, provider: str) -> None:
        self._inner = inner
        self._provider = provider

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not tracing.enabled():
            return await self._inner.handle_async_request(request)
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        url = request.url
        # Credentials in the URL (a gateway's user:password@) are redacted as the
        # HTTP conventions ask; the query (where some gateways take keys) is dropped.
        userinfo = b"REDACTED:REDACTED" if url.userinfo else b""
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.full": str(url.copy_with(query=None, userinfo=userinfo)),
            "server.address": url.host,
            "gen_ai.provider.name": self._provider,
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        tracer = trace.get_tracer("switchyard.modelserver.http")
        with tracer.start_as_current_span(
            request.method, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            for key, value in carrier.items():
                request.headers[key] = value
            try:
                response = await self._inner.handle_async_request(request)
            except Exception as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_attribute("error.type", str(response.status_code))
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(options: CloudOptions, provider: str) -> httpx2.AsyncClient:
    """The HTTP client a backend's SDK uses (no retries of its own; traced)."""
    return httpx2.AsyncClient(
        transport=TracedTransport(httpx2.AsyncHTTPTransport(retries=0), provider),
        timeout=httpx2.Timeout(
            options.timeout_seconds,
            connect=min(options.connect_timeout_seconds, options.timeout_seconds),
        ),
    )


def request_timeout(options: CloudOptions, request: GenerationRequest) -> httpx2.Timeout:
    """The HTTP timeout for one request: the caller's remaining deadline, capped by config."""
    total = options.timeout_seconds
    if request.deadline is not None:
        total = max(0.001, min(total, request.deadline - time.monotonic()))
    return httpx2.Timeout(total, connect=min(options.connect_timeout_seconds, total))
