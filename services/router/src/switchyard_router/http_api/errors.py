"""Errors on the HTTP front: a request's ``StatusError`` as an HTTP status and each
vendor's JSON error shape.

The HTTP status comes from one table, the canonical mapping of gRPC codes onto HTTP
(``google.rpc.Code``, as gRPC-HTTP gateways use it); the README's error table lists
it beside the gRPC statuses. RESOURCE_EXHAUSTED's RetryInfo becomes ``retry-after``.
A field violation names the field as the caller's API spells it (``max_tokens``,
not ``sampling.max_tokens``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
import msgspec

from switchyard.status import FieldViolation, StatusDetails, parse_details
from switchyard_common.status import StatusError, invalid_argument
from switchyard_router.fronts.front import UpstreamStatusError

HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
"""The HTTP status of each gRPC code (``google.rpc.Code``'s own mapping)."""

_STATUS_BY_REASON = {"REQUEST_TOO_LARGE": 413}
"""Where a reason says more than its code: a body over the limit is 413, as both vendors
answer it (Anthropic's ``request_too_large``)."""

_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    501: "not_implemented_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error answer: HTTP status, JSON body and headers."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


def _details(error: StatusError) -> StatusDetails:
    if isinstance(error, UpstreamStatusError):
        return parse_details(error.trailers)
    return error.details


def _message(error: StatusError, details: StatusDetails, rename: Mapping[str, str]) -> str:
    """The error's text; a field violation's field as the caller's API names it."""
    if not details.field_violations:
        return error.message
    return "invalid request: " + "; ".join(
        f"{api_field(v.field, rename)}: {v.description}" for v in details.field_violations
    )


def api_field(contract_field: str, rename: Mapping[str, str]) -> str:
    """A contract field path (``sampling.max_tokens``) as the caller's API names it.

    ``rename`` maps whole paths, or paths with their indexes left out (``tools[].strict``
    to ``tools[].function.strict``): the field's own indexes go back in, in order."""
    if contract_field in rename:
        return rename[contract_field]
    indexes = _INDEX.findall(contract_field)
    if indexes:
        template = rename.get(_INDEX.sub("[]", contract_field))
        if template is not None:
            given = iter(indexes)
            return _NO_INDEX.sub(lambda _: f"[{next(given)}]", template)
    return contract_field.removeprefix("sampling.")


_INDEX = re.compile(r"\[(\d+)\]")
_NO_INDEX = re.compile(r"\[\]")


def _status(error: StatusError, details: StatusDetails) -> int:
    if details.reason in _STATUS_BY_REASON:
        return _STATUS_BY_REASON[details.reason]
    return HTTP_STATUS.get(error.code, 500)


def _headers(details: StatusDetails) -> list[tuple[str, str]]:
    headers = [("content-type", "application/json")]
    if details.retry_after is not None:
        # Whole seconds, never early: a caller that waits this long is admitted.
        headers.append(("retry-after", str(max(1, math.ceil(details.retry_after)))))
    return headers


def openai_error(error: StatusError, rename: Mapping[str, str] = {}) -> HttpError:
    """OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    details = _details(error)
    status = _status(error, details)
    violations = details.field_violations
    body = {
        "error": {
            "message": _message(error, details, rename),
            "type": _OPENAI_TYPE.get(status, "server_error"),
            "param": api_field(violations[0].field, rename) if violations else None,
            "code": details.reason.lower() if details.reason else None,
        }
    }
    return HttpError(status, msgspec.json.encode(body), _headers(details))


def anthropic_error(error: StatusError, rename: Mapping[str, str] = {}) -> HttpError:
    """Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    details = _details(error)
    status = _status(error, details)
    body = {
        "type": "error",
        "error": {
            "type": _ANTHROPIC_TYPE.get(status, "api_error"),
            "message": _message(error, details, rename),
        },
    }
    return HttpError(status, msgspec.json.encode(body), _headers(details))


def bad_field(field: str, description: str) -> StatusError:
    """INVALID_ARGUMENT naming a field of the caller's JSON (already in its API's names)."""
    return invalid_argument(FieldViolation(field, description))


def body_too_large(description: str) -> StatusError:
    """INVALID_ARGUMENT naming the body, answered 413 (``REQUEST_TOO_LARGE``)."""
    return StatusError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: body: {description}",
        reason="REQUEST_TOO_LARGE",
        field_violations=(FieldViolation("body", description),),
    )


def unsupported(field: str, why: str = "is not supported by Switchyard") -> StatusError:
    """INVALID_ARGUMENT for a field this front cannot honour."""
    return bad_field(field, why)
