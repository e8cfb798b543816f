"""Reading Switchyard's rich gRPC errors: the google.rpc details of a status.

A status's ``grpc-status-details-bin`` trailer carries a ``google.rpc.Status``
with BadRequest, ErrorInfo and RetryInfo details; :func:`parse_details` reads
them back. The servers build them with ``switchyard_common.status``.
:func:`refused_stream` tells a call that HTTP/2 refused (never processed) from
other failures.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def refused_stream(code_name: str, details: str | None) -> bool:
    """Whether a call that failed with status ``code_name`` (e.g. ``"UNAVAILABLE"``) and
    ``details`` was refused by the server's HTTP/2 layer (REFUSED_STREAM: more calls
    on the connection than it takes at once). HTTP/2 guarantees such a call was never
    processed, so it can be sent again at once. gRPC reports it as UNAVAILABLE."""
    if code_name != "UNAVAILABLE" or not details:
        return False
    # grpcio words it "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))".
    return ("RST_STREAM" in details and "error code 7" in details) or "REFUSED_STREAM" in details
