"""Rich gRPC errors: the one place where Switchyard builds and reads google.rpc details.

Servers raise :class:`StatusError`; their servicers turn it into a gRPC status
whose ``grpc-status-details-bin`` trailer carries a ``google.rpc.Status`` with
BadRequest, ErrorInfo and RetryInfo details. Clients read them back with
:func:`parse_details`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DETAILS_METADATA_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "switchyard.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, named by its path (e.g. ``sampling.top_p``)."""

    field: str
    description: str


@dataclass(frozen=True)
class StatusDetails:
    """The details Switchyard attaches to an error status."""

    reason: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[FieldViolation] = ()
    retry_after: float | None = None


class StatusError(Exception):
    """A failure with a canonical gRPC status code, raised inside servers."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = StatusDetails(
            reason=reason,
            metadata=dict(metadata or {}),
            field_violations=tuple(field_violations),
            retry_after=retry_after,
        )

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The trailer that carries the details as a google.rpc.Status."""
        return ((DETAILS_METADATA_KEY, to_status_proto(self).SerializeToString()),)


def to_status_proto(error: StatusError) -> status_pb2.Status:
    """Encodes an error as a google.rpc.Status with its details."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    details = error.details
    if details.field_violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in details.field_violations
            ]
        )
        _pack(status, bad_request)
    if details.reason:
        _pack(
            status,
            error_details_pb2.ErrorInfo(
                reason=details.reason, domain=ERROR_DOMAIN, metadata=dict(details.metadata)
            ),
        )
    if details.retry_after is not None:
        seconds = max(0.0, details.retry_after)
        whole = math.floor(seconds)
        _pack(
            status,
            error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
            ),
        )
    return status


def _pack(status: status_pb2.Status, message: object) -> None:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    status.details.append(packed)


def parse_details(trailing_metadata: Iterable[Any] | None) -> StatusDetails:
    """Reads Switchyard's details from a call's trailing metadata (empty if none)."""
    for key, value in trailing_metadata or ():
        if key == DETAILS_METADATA_KEY and isinstance(value, bytes):
            return _details_from_proto(status_pb2.Status.FromString(value))
    return StatusDetails()


def _details_from_proto(status: status_pb2.Status) -> StatusDetails:
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_after: float | None = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return StatusDetails(
        reason=reason,
        metadata=metadata,
        field_violations=tuple(violations),
        retry_after=retry_after,
    )


def invalid_argument(*violations: FieldViolation) -> StatusError:
    """INVALID_ARGUMENT naming every bad field in its message and in a BadRequest."""
    message = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return StatusError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {message}",
        reason="INVALID_REQUEST",
        field_violations=violations,
    )


def model_not_found(model: str, available: Sequence[str]) -> StatusError:
    """NOT_FOUND naming the model asked for and the ones that exist."""
    known = ", ".join(available) if available else "none"
    return StatusError(
        grpc.StatusCode.NOT_FOUND,
        f"model {model!r} not found; available models: {known}",
        reason="MODEL_NOT_FOUND",
        metadata={"model": model, "available": ",".join(available)},
    )
