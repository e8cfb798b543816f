"""The SDK's exceptions: one hierarchy, mapped from gRPC status codes.

SwitchyardError
├── TemplateError              a prompt template that cannot be parsed or rendered
│   └── MissingVariablesError  values missing for a template (.missing, .template_variables)
└── APIError                   (any non-OK status; .code, .reason, .details)
    ├── InvalidArgumentError   INVALID_ARGUMENT, OUT_OF_RANGE (.field_violations)
    ├── NotFoundError          NOT_FOUND (.available_models)
    ├── AuthenticationError    UNAUTHENTICATED
    ├── PermissionDeniedError  PERMISSION_DENIED
    ├── FailedPreconditionError FAILED_PRECONDITION (e.g. a backend's provider key is wrong)
    ├── RateLimitError         RESOURCE_EXHAUSTED (.retry_after)
    ├── UnavailableError       UNAVAILABLE (.retry_after)
    ├── DeadlineExceededError  DEADLINE_EXCEEDED
    ├── RequestCancelledError  CANCELLED
    ├── UnimplementedError     UNIMPLEMENTED (a method this server does not serve)
    └── InternalServerError    INTERNAL, UNKNOWN, DATA_LOSS and the rest
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from switchyard.status import FieldViolation, StatusDetails, parse_details


class SwitchyardError(Exception):
    """Base class of every exception the SDK raises."""


class TemplateError(SwitchyardError, ValueError):
    """A prompt template is malformed, or a chain's templates do not fit together."""


class MissingVariablesError(TemplateError, KeyError):
    """Rendering a template (or running a chain) without a value for each of its variables."""

    def __init__(
        self, missing: Sequence[str], template_variables: Sequence[str], where: str
    ) -> None:
        self.missing = tuple(missing)
        self.template_variables = tuple(template_variables)
        names = ", ".join(repr(name) for name in self.missing)
        expected = ", ".join(self.template_variables) or "none"
        plural = "s" if len(self.missing) > 1 else ""
        super().__init__(f"{where} is missing variable{plural} {names} (it takes: {expected})")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class APIError(SwitchyardError):
    """The server answered with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str, details: StatusDetails) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def reason(self) -> str | None:
        """A stable machine-readable reason (google.rpc.ErrorInfo), if the server gave one."""
        return self.details.reason

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait before retrying (google.rpc.RetryInfo)."""
        return self.details.retry_after

    @property
    def field_violations(self) -> Sequence[FieldViolation]:
        """The invalid request fields (google.rpc.BadRequest)."""
        return self.details.field_violations


class InvalidArgumentError(APIError):
    """The request was invalid; ``field_violations`` names the fields."""


class NotFoundError(APIError):
    """The model does not exist; ``available_models`` lists those that do."""

    @property
    def available_models(self) -> list[str]:
        """Model ids the server said it has."""
        available = self.details.metadata.get("available", "")
        return [m for m in available.split(",") if m]


class AuthenticationError(APIError):
    """Credentials were missing or wrong."""


class PermissionDeniedError(APIError):
    """Credentials were valid but not allowed to do this."""


class FailedPreconditionError(APIError):
    """The server is not set up to do this (e.g. its cloud provider rejected its
    API key); an operator must act, retrying will not help. See ``reason``."""


class RateLimitError(APIError):
    """The server or its backend is overloaded or rate-limited; see ``retry_after``."""


class UnavailableError(APIError):
    """No server could take the request now (down, loading, draining)."""


class DeadlineExceededError(APIError):
    """The request's timeout passed before it finished."""


class RequestCancelledError(APIError):
    """The request was cancelled."""


class UnimplementedError(APIError):
    """The server does not serve this method (e.g. the router's admin service asked
    of a model server): the wrong address, not a server failure."""


class InternalServerError(APIError):
    """The server failed in a way that is not the caller's fault."""


_BY_CODE: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def from_rpc_error(error: grpc.RpcError) -> APIError:
    """Converts a grpcio error (sync or asyncio) into the SDK's exception."""
    # Every RpcError grpcio raises is also a grpc.Call (sync) or an AioRpcError.
    call: Any = error
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    details = parse_details(call.trailing_metadata())
    return _BY_CODE.get(code, InternalServerError)(code, message, details)
