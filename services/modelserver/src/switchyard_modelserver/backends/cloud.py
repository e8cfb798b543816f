"""What the cloud backends (openai, anthropic, ollama) share.

- Options: the provider's address, where the API key comes from, the models
  served (alias -> provider model id, capabilities, context length), timeouts,
  the SDK's own retries, the startup check and the health rules.
- The one table that turns a provider's HTTP failures into gRPC statuses
  (:func:`http_status_error`), documented in the README.
- API keys, read from an environment variable or a mounted file and kept out
  of every message that leaves the process (:class:`Secret`).
- Health: a model turns UNAVAILABLE (health NOT_SERVING) after consecutive
  provider failures, or at once when the provider rejects the credentials, and
  READY again when a probe of the provider succeeds.
- The HTTP client every provider uses: the caller's deadline as its timeout,
  and, with tracing on, one CLIENT span per HTTP request whose W3C context goes
  out in the request's headers.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import logging
import math
import os
import re
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import grpc
import httpx2
from pydantic import Field, model_validator

from switchyard_common import tracing
from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.domain import (
    Capability,
    GenerationEvent,
    GenerationRequest,
    ModelCard,
    ModelState,
)

log = logging.getLogger(__name__)

# The HTTP and SDK loggers write every request's URL (query strings included,
# where some gateways carry keys) and, at DEBUG, request options: keep them quiet.
for _name in ("httpx2", "httpcore2", "openai", "anthropic"):
    logging.getLogger(_name).setLevel(logging.WARNING)

CapabilityName = Literal["completion", "chat", "streaming", "logprobs"]


def _chat_and_streaming() -> list[CapabilityName]:
    return ["chat", "streaming"]


class CloudModel(BackendOptions):
    """One model a cloud backend serves."""

    id: str = Field(description="the model id clients use")
    provider_model: str | None = Field(
        default=None, description="the provider's model id (default: id)"
    )
    aliases: list[str] = Field(default_factory=list)
    context_length: int = Field(default=8192, ge=16)
    capabilities: list[CapabilityName] = Field(default_factory=_chat_and_streaming)
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="max_tokens sent when a request sets none"
    )
    concurrency: int = Field(default=64, ge=1, description="requests in flight (the rest queue)")

    @property
    def upstream(self) -> str:
        return self.provider_model or self.id


class CloudOptions(BackendOptions):
    """Options every cloud backend has."""

    base_url: str | None = Field(default=None, description="the provider's API address")
    api_key_env: str | None = Field(default=None, description="environment variable with the key")
    api_key_file: Path | None = Field(default=None, description="file with the key (a mount)")
    models: list[CloudModel] = Field(min_length=1)
    timeout_seconds: float = Field(
        default=600.0, gt=0, description="HTTP timeout when the caller sets no shorter deadline"
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    max_retries: int = Field(
        default=0,
        ge=0,
        le=5,
        description="the SDK's own retries; 0 leaves retrying to the router, which goes elsewhere",
    )
    startup_check: bool = Field(
        default=True,
        description="list the provider's models at start (checks address and credentials); "
        "costs one free request",
    )
    unhealthy_after_failures: int = Field(
        default=3, ge=1, description="consecutive provider failures that make a model NOT_SERVING"
    )
    probe_interval_seconds: float = Field(
        default=10.0, gt=0, description="how often an unhealthy model's provider is probed"
    )

    @model_validator(mode="after")
    def _check(self) -> CloudOptions:
        names = [m.id for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("model ids must be unique")
        if self.api_key_env and self.api_key_file:
            raise ValueError("set api_key_env or api_key_file, not both")
        return self


class Secret:
    """An API key: its value is only handed to the SDK, and scrubbed from text."""

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def scrub(self, text: str) -> str:
        """``text`` with the key (and any long token shaped like one) replaced."""
        if self._value:
            text = text.replace(self._value, "[redacted]")
        # Providers echo keys back in error bodies (OpenAI: "Incorrect API key provided: ...").
        return _KEY_LIKE.sub("[redacted]", text)

    def __repr__(self) -> str:
        return "Secret([redacted])" if self._value else "Secret(None)"


# Vendor key shapes (sk-..., sk-ant-..., key-...), masked or not.
_KEY_LIKE = re.compile(r"\b(?:sk|pk|key|tok)-[A-Za-z0-9_\-*.]{12,}")


def load_secret(options: CloudOptions, *, required: bool, kind: str) -> Secret:
    """Reads the API key named in config; a missing one is a config error naming the key."""
    if options.api_key_env:
        value = os.environ.get(options.api_key_env, "").strip()
        if not value:
            raise ValueError(
                f"backend.api_key_env: environment variable {options.api_key_env} is not set"
            )
        return Secret(value)
    if options.api_key_file:
        try:
            value = options.api_key_file.read_text().strip()
        except OSError as error:
            raise ValueError(
                f"backend.api_key_file: cannot read {options.api_key_file}: {error.strerror}"
            ) from None
        if not value:
            raise ValueError(f"backend.api_key_file: {options.api_key_file} is empty")
        return Secret(value)
    if required:
        raise ValueError(f"backend: the {kind} backend needs api_key_env or api_key_file")
    return Secret(None)


# ---------------------------------------------------------------------------
# The error table


_CONTEXT_LENGTH = re.compile(
    r"context[ _]length|context[ _]window|prompt is too long|too many tokens|"
    r"maximum context|exceeds the model|input length",
    re.IGNORECASE,
)


_MAX_RETRY_AFTER = 86400.0  # a day: longer is a broken header, not advice
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|us|µs|ns|h|m|s)")


def retry_after(headers: Mapping[str, str], default: float = 1.0) -> float:
    """Seconds to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP
    date), else when the exhausted rate limit resets (OpenAI's ``x-ratelimit-reset-*``
    durations, Anthropic's ``anthropic-ratelimit-*-reset`` times). A header that
    cannot be read counts as absent: a vendor's odd header never fails the request."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    milliseconds = _seconds(lowered.get("retry-after-ms", ""))
    if milliseconds is not None:
        return milliseconds / 1000
    value = lowered.get("retry-after", "")
    seconds = _seconds(value)
    if seconds is None:
        seconds = _until(value, email.utils.parsedate_to_datetime)
    if seconds is None:
        seconds = _rate_limit_reset(lowered)
    return default if seconds is None else seconds


def _clamped(seconds: float) -> float | None:
    return max(0.0, min(seconds, _MAX_RETRY_AFTER)) if math.isfinite(seconds) else None


def _seconds(value: str) -> float | None:
    try:
        return _clamped(float(value))
    except ValueError:
        return None


def _until(value: str, parse: Callable[[str], datetime]) -> float | None:
    """Seconds from now until the time ``value`` names (None if it names none)."""
    try:
        moment = parse(value)
    except (ValueError, TypeError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _clamped(moment.timestamp() - time.time())


def _go_duration(value: str) -> float | None:
    """``6m0s``, ``1.5s``, ``20ms`` (OpenAI's reset headers), or plain seconds."""
    if _GO_DURATION.sub("", value) or not value:
        return _seconds(value)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return _clamped(sum(float(n) * scale[unit] for n, unit in _GO_DURATION.findall(value)))


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """When the rate limit that ran out resets (the latest one if several did, or if
    none says it ran out: the request may need more than one has left)."""
    resets: list[tuple[bool, float]] = []
    for name, value in headers.items():
        if name.startswith("x-ratelimit-reset-"):
            limit = name.removeprefix("x-ratelimit-reset-")
            remaining = headers.get(f"x-ratelimit-remaining-{limit}")
            seconds = _go_duration(value)
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            limit = name.removeprefix("anthropic-ratelimit-").removesuffix("-reset")
            remaining = headers.get(f"anthropic-ratelimit-{limit}-remaining")
            seconds = _until(value, datetime.fromisoformat)
        else:
            continue
        if seconds is not None:
            resets.append((remaining == "0", seconds))
    exhausted = [seconds for ran_out, seconds in resets if ran_out]
    return max(exhausted or [seconds for _, seconds in resets], default=None)


# The HTTP status an error event inside a 200 stream stands for, by its type or
# code (Anthropic's and OpenAI's names), so that it meets the same table.
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_event_status(*names: object) -> int | None:
    """The HTTP status of an error event inside a stream, from the first of its
    type or code that names one (OpenAI-compatible servers such as vLLM put the
    status itself in ``code``); None when none does."""
    for name in names:
        text = str(name) if isinstance(name, int | str) else ""
        if text.isdigit() and 400 <= int(text) <= 599:
            return int(text)
        if text in _ERROR_EVENT_STATUS:
            return _ERROR_EVENT_STATUS[text]
    return None


MODEL_LIST = CloudModel(id="(model list)")
"""Stands for the provider's model list in the errors of the startup check and probes."""


def http_status_error(
    *,
    provider: str,
    status: int,
    message: str,
    model: CloudModel,
    headers: Mapping[str, str],
    request: GenerationRequest | None,
    error_type: str = "",
) -> StatusError:
    """The gRPC status for a provider's HTTP error answer (the README's table)."""
    detail = f"{provider} answered HTTP {status}: {message}" if message else f"HTTP {status}"
    metadata = {"provider": provider, "http_status": str(status), "model": model.id}
    if status in (400, 413, 422) and "overloaded" not in error_type:
        if _CONTEXT_LENGTH.search(message) or "context_length" in error_type:
            prompt_field = "prompt" if request is None or request.prompt is not None else "messages"
            return StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid request: {prompt_field}: too long for model {model.id}'s context "
                f"length ({model.context_length} tokens) with sampling.max_tokens; {detail}",
                reason="CONTEXT_LENGTH_EXCEEDED",
                metadata=metadata,
                field_violations=[
                    FieldViolation(
                        prompt_field,
                        f"exceeds the context length of {model.id} together with "
                        "sampling.max_tokens",
                    )
                ],
            )
        return StatusError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid request: {detail}",
            reason="PROVIDER_REJECTED_REQUEST",
            metadata=metadata,
        )
    if status in (401, 403):
        # The caller's credentials are fine; the model server's are not. The
        # operator must act, so this is neither UNAUTHENTICATED nor INTERNAL.
        what = "rejected the model server's API key" if status == 401 else "denied the API key"
        return StatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{provider} {what} (HTTP {status}); the operator must fix backend.api_key_env or "
            f"backend.api_key_file of this model server",
            reason="PROVIDER_CREDENTIALS_REJECTED"
            if status == 401
            else "PROVIDER_PERMISSION_DENIED",
            metadata=metadata,
        )
    if status == 404 and model is MODEL_LIST:
        return StatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{provider} has no model list at this address (HTTP 404); check backend.base_url",
            reason="PROVIDER_NOT_FOUND",
            metadata=metadata,
        )
    if status == 404:
        return StatusError(
            grpc.StatusCode.NOT_FOUND,
            f"{provider} has no model {model.upstream!r} (served as {model.id!r}); {detail}",
            reason="PROVIDER_MODEL_NOT_FOUND",
            metadata=metadata,
        )
    if status == 429:
        return StatusError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{provider} rate limit: {detail}",
            reason="PROVIDER_RATE_LIMITED",
            metadata=metadata,
            retry_after=retry_after(headers),
        )
    if status >= 500 or status in (408, 409) or "overloaded" in error_type:
        overloaded = status == 529 or "overloaded" in error_type
        return StatusError(
            grpc.StatusCode.UNAVAILABLE,
            f"{provider} is {'overloaded' if overloaded else 'failing'}: {detail}",
            reason="PROVIDER_OVERLOADED" if overloaded else "PROVIDER_UNAVAILABLE",
            metadata=metadata,
            retry_after=retry_after(headers) if overloaded else None,
        )
    return StatusError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"{provider} refused the request: {detail}",
        reason="PROVIDER_REFUSED",
        metadata=metadata,
    )


def _for(model: CloudModel) -> str:
    return "for its model list" if model is MODEL_LIST else f"for model {model.id}"


def timeout_error(provider: str, model: CloudModel) -> StatusError:
    return StatusError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{provider} did not answer {_for(model)} within the deadline",
        reason="PROVIDER_TIMEOUT",
        metadata={"provider": provider, "model": model.id},
    )


def connection_error(provider: str, model: CloudModel, what: str) -> StatusError:
    return StatusError(
        grpc.StatusCode.UNAVAILABLE,
        f"{provider} connection failed {_for(model)}: {what}",
        reason="PROVIDER_UNREACHABLE",
        metadata={"provider": provider, "model": model.id},
    )


def broken_stream_error(provider: str, model: CloudModel, what: str) -> StatusError:
    return StatusError(
        grpc.StatusCode.UNAVAILABLE,
        f"{provider} stream {_for(model)} broke off: {what}",
        reason="PROVIDER_STREAM_BROKEN",
        metadata={"provider": provider, "model": model.id},
    )


def transport_error(provider: str, model: CloudModel, error: BaseException) -> StatusError | None:
    """The status for an httpx2 failure (timeouts, refused or dropped connections)."""
    if isinstance(error, httpx2.TimeoutException):
        return timeout_error(provider, model)
    if isinstance(error, httpx2.RemoteProtocolError | httpx2.ReadError):
        return broken_stream_error(provider, model, type(error).__name__)
    if isinstance(error, httpx2.TransportError):
        return connection_error(provider, model, type(error).__name__)
    return None


# ---------------------------------------------------------------------------
# HTTP with deadlines and spans


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


# ---------------------------------------------------------------------------
# Health


class ProviderHealth:
    """Turns call outcomes into model states: the circuit breaker of a cloud backend."""

    def __init__(self, backend: CloudBackend, report: StateReporter) -> None:
        self._backend = backend
        self._report = report
        self._failures: dict[str, int] = {}
        self._down: dict[str, str] = {}
        self._probe: asyncio.Task[None] | None = None

    def up(self, model_id: str) -> None:
        self._failures[model_id] = 0
        if model_id in self._down:
            del self._down[model_id]
        self._report(self._backend.card(model_id), ModelState.READY, "")

    def down(self, model_id: str, detail: str) -> None:
        first = model_id not in self._down
        self._down[model_id] = detail
        self._report(self._backend.card(model_id), ModelState.UNAVAILABLE, detail)
        if first:
            log.warning("model %s is unavailable: %s", model_id, detail)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    def succeeded(self, model_id: str) -> None:
        self._failures[model_id] = 0

    def failed(self, model_id: str, error: StatusError) -> None:
        """Counts a failure that says the provider, not the request, is at fault."""
        reason = error.details.reason or ""
        if reason == "PROVIDER_CREDENTIALS_REJECTED":  # the key is wrong for every model
            for other in self._backend.model_ids():
                self.down(other, error.message)
            return
        if reason == "PROVIDER_PERMISSION_DENIED":  # the key may lack only this model
            self.down(model_id, error.message)
            return
        if error.code is not grpc.StatusCode.UNAVAILABLE:
            return
        count = self._failures.get(model_id, 0) + 1
        self._failures[model_id] = count
        if count >= self._backend.options.unhealthy_after_failures:
            self.down(model_id, f"{count} consecutive provider failures; last: {error.message}")

    async def _probe_until_up(self) -> None:
        while self._down:
            await asyncio.sleep(self._backend.options.probe_interval_seconds)
            self._backend.reload_secret()  # the operator may have fixed the key's file
            try:
                missing = await self._backend.check()
            except StatusError as error:
                log.info("provider probe failed: %s", error.message)
                continue
            for model_id in list(self._down):
                if model_id not in missing or not self._backend.authoritative_model_list:
                    log.info("model %s is available again", model_id)
                    self.up(model_id)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()


# ---------------------------------------------------------------------------
# The shared backend


_CAPABILITIES = {
    "completion": Capability.COMPLETION,
    "chat": Capability.CHAT,
    "streaming": Capability.STREAMING,
    "logprobs": Capability.LOGPROBS,
}


class CloudBackend(Backend):
    """A provider reached over HTTP; subclasses speak its API."""

    provider: ClassVar[str]
    remote = True
    authoritative_model_list: ClassVar[bool] = False
    """Whether a model the provider does not list is unavailable (else only a warning)."""
    options: CloudOptions

    def __init__(self, options: CloudOptions) -> None:
        self.options = options
        self._models = {m.id: m for m in options.models}
        self._health: ProviderHealth | None = None

    # -- what a provider implements --------------------------------------

    @abc.abstractmethod
    async def list_provider_models(self) -> set[str] | None:
        """The provider's model ids (None where the list is not authoritative);
        raises StatusError when the provider cannot be reached or refuses."""

    @abc.abstractmethod
    def stream(
        self, model: CloudModel, request: GenerationRequest
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Streams one generation from the provider; closing it closes the HTTP stream."""

    @abc.abstractmethod
    def status_of(
        self, error: Exception, model: CloudModel, request: GenerationRequest | None
    ) -> StatusError | None:
        """The gRPC status of an SDK or HTTP error (None: not a provider failure)."""

    # -- the Backend interface --------------------------------------------

    def model_ids(self) -> list[str]:
        return list(self._models)

    def card(self, model_id: str) -> ModelCard:
        model = self._models[model_id]
        return ModelCard(
            id=model.id,
            aliases=tuple(model.aliases),
            context_length=model.context_length,
            capabilities=frozenset(_CAPABILITIES[c] for c in model.capabilities),
        )

    def models(self) -> list[ModelCard]:
        return [self.card(model_id) for model_id in self._models]

    def concurrency(self, model_id: str) -> int:
        return self._models[model_id].concurrency

    async def check(self) -> set[str]:
        """Asks the provider for its models; returns our ids it does not have."""
        provider_ids = await self.list_provider_models()
        if provider_ids is None:
            return set()
        missing = {m.id for m in self._models.values() if m.upstream not in provider_ids}
        return missing

    async def load(self, report: StateReporter) -> None:
        self._health = ProviderHealth(self, report)
        if not self.options.startup_check:
            for model_id in self._models:
                self._health.up(model_id)
            return
        try:
            missing = await self.check()
        except StatusError as error:
            for model_id in self._models:
                self._health.down(model_id, error.message)
            return
        for model_id, model in self._models.items():
            if model_id in missing and self.authoritative_model_list:
                self._health.down(model_id, f"{self.provider} has no model {model.upstream!r}")
                continue
            if model_id in missing:  # compatible servers list models their own way
                log.warning(
                    "%s does not list model %r (served as %s); serving it anyway",
                    self.provider,
                    model.upstream,
                    model_id,
                )
            self._health.up(model_id)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        model = self._models[request.model]
        capabilities = self.card(model.id).capabilities
        if request.prompt is not None and Capability.COMPLETION not in capabilities:
            raise invalid_argument(
                FieldViolation("prompt", f"model {model.id} is chat-only; send messages")
            )
        if request.messages is not None and Capability.CHAT not in capabilities:
            raise invalid_argument(
                FieldViolation("messages", f"model {model.id} takes a prompt, not messages")
            )
        # include_token_ids is accepted (routers that may resume a stream always
        # ask) but answered without ids: providers do not expose them.
        if request.continuation.token_ids:
            raise invalid_argument(
                FieldViolation(
                    "continuation.token_ids",
                    f"the {self.provider} backend has no token ids; send continuation.text",
                )
            )
        events = self.stream(model, request)
        try:
            async with aclosing(events):
                async for event in events:
                    yield event
        except StatusError as error:
            scrubbed = self._failed(model, error)
            if scrubbed is error:
                raise
            raise scrubbed from None
        except Exception as error:
            status = self.status_of(error, model, request)
            if status is None:
                raise
            raise self._failed(model, status) from None
        if self._health is not None:
            self._health.succeeded(model.id)

    async def sdk_model_ids(self, client: Any) -> set[str]:
        """The model ids an official SDK client's ``models.list()`` pages through;
        a failure becomes the table's StatusError, with the key scrubbed."""
        try:
            page = await client.models.list(timeout=self.options.connect_timeout_seconds)
            return {model.id async for model in page}
        except Exception as error:
            status = self.status_of(error, MODEL_LIST, None)
            if status is None:
                raise
            raise self._scrubbed(status) from None

    def _scrubbed(self, error: StatusError) -> StatusError:
        """``error`` with the API key, should a provider echo it, replaced."""
        return error.with_message(self.secret.scrub(error.message))

    def _failed(self, model: CloudModel, error: StatusError) -> StatusError:
        """Records the failure for health; returns the error to raise, scrubbed."""
        error = self._scrubbed(error)
        if self._health is not None:
            self._health.failed(model.id, error)
        return error

    @property
    @abc.abstractmethod
    def secret(self) -> Secret:
        """The backend's API key."""

    @abc.abstractmethod
    def use_secret(self, secret: Secret) -> None:
        """Sends ``secret`` as the API key from the next request on."""

    def reload_secret(self) -> None:
        """Re-reads ``api_key_file`` (a rotated or fixed Kubernetes secret is seen
        without a restart); a key from the environment cannot change."""
        if self.options.api_key_file is None:
            return
        try:
            fresh = load_secret(self.options, required=False, kind=self.kind)
        except ValueError as error:  # mid-rotation: keep the old key for now
            log.info("cannot reload the API key: %s", error)
            return
        if fresh.reveal() != self.secret.reveal():
            log.info("API key file %s changed; using the new key", self.options.api_key_file)
            self.use_secret(fresh)

    async def close(self) -> None:
        if self._health is not None:
            self._health.close()


def max_tokens_for(model: CloudModel, request: GenerationRequest) -> int | None:
    """The request's max_tokens, else the model's configured default."""
    return request.sampling.max_tokens or model.default_max_tokens


def unsupported(field: str, provider: str) -> StatusError:
    return invalid_argument(FieldViolation(field, f"not supported by the {provider} backend"))
