"""The error table: a provider's HTTP failures (status, error type, error
events inside a stream, timeouts and broken connections) as gRPC statuses.

The README's "Cloud backends" section documents this table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc
import httpx2

from switchyard_common.status import FieldViolation, StatusError, invalid_argument
from switchyard_modelserver.backends.cloud.options import CloudModel
from switchyard_modelserver.backends.cloud.retry_after import retry_after
from switchyard_modelserver.domain import GenerationRequest

_CONTEXT_LENGTH = re.compile(
    r"context[ _]length|context[ _]window|prompt is too long|too many tokens|"
    r"maximum context|exceeds the model|input length",
    re.IGNORECASE,
)


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
    message = f"{provider} did not answer {_for(model)} within the deadline"
    return _failure(grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT", provider, model, message)


def connection_error(provider: str, model: CloudModel, what: str) -> StatusError:
    message = f"{provider} connection failed {_for(model)}: {what}"
    return _failure(grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNREACHABLE", provider, model, message)


def broken_stream_error(provider: str, model: CloudModel, what: str) -> StatusError:
    message = f"{provider} stream {_for(model)} broke off: {what}"
    return _failure(grpc.StatusCode.UNAVAILABLE, "PROVIDER_STREAM_BROKEN", provider, model, message)


def _failure(
    code: grpc.StatusCode, reason: str, provider: str, model: CloudModel, message: str
) -> StatusError:
    """A failure with no HTTP answer behind it (so no ``http_status`` in its ErrorInfo)."""
    return StatusError(
        code, message, reason=reason, metadata={"provider": provider, "model": model.id}
    )


def sdk_connection_error(provider: str, model: CloudModel, error: Exception) -> StatusError:
    """The status for an official SDK's connection error: that of the httpx2
    failure behind it, else PROVIDER_UNREACHABLE."""
    cause = error.__cause__
    status = transport_error(provider, model, cause) if cause is not None else None
    return status or connection_error(provider, model, type(error).__name__)


def transport_error(provider: str, model: CloudModel, error: BaseException) -> StatusError | None:
    """The status for an httpx2 failure (timeouts, refused or dropped connections)."""
    if isinstance(error, httpx2.TimeoutException):
        return timeout_error(provider, model)
    if isinstance(error, httpx2.RemoteProtocolError | httpx2.ReadError):
        return broken_stream_error(provider, model, type(error).__name__)
    if isinstance(error, httpx2.TransportError):
        return connection_error(provider, model, type(error).__name__)
    return None


def unsupported(field: str, provider: str) -> StatusError:
    return invalid_argument(FieldViolation(field, f"not supported by the {provider} backend"))
