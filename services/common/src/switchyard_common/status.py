"""Building Switchyard's rich gRPC errors, and the one way a server ends a call with one.

Code inside the servers raises :class:`StatusError`; the RPC handlers end the
call with :func:`abort`, which sends the status with its ``google.rpc`` details
(BadRequest, ErrorInfo, RetryInfo) in the ``grpc-status-details-bin`` trailer.
Clients read them back with ``switchyard.status.parse_details``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from switchyard.status import DETAILS_METADATA_KEY, ERROR_DOMAIN, FieldViolation, StatusDetails

__all__ = [
    "DETAILS_METADATA_KEY",
    "FieldViolation",
    "StatusDetails",
    "StatusError",
    "abort",
    "adapter_not_found",
    "invalid_argument",
    "model_not_found",
    "to_status_proto",
]

Trailers = Iterable[tuple[str, str | bytes]]


class StatusError(Exception):
    """A failure with a canonical gRPC status code, raised inside servers.

    Immutable: :meth:`with_message` makes a copy with other text (for example
    with a secret scrubbed out of a provider's message).
    """

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
        self._code = code
        self._message = message
        self._details = StatusDetails(
            reason=reason,
            metadata=dict(metadata or {}),
            field_violations=tuple(field_violations),
            retry_after=retry_after,
        )

    @property
    def code(self) -> grpc.StatusCode:
        return self._code

    @property
    def message(self) -> str:
        return self._message

    @property
    def details(self) -> StatusDetails:
        return self._details

    def with_message(self, message: str) -> StatusError:
        """The same status and details with ``message`` as its text."""
        if message == self._message:
            return self
        copy = StatusError(self._code, message)
        copy._details = dataclasses.replace(self._details)
        return copy

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """The trailer that carries the details as a google.rpc.Status."""
        return ((DETAILS_METADATA_KEY, to_status_proto(self).SerializeToString()),)


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: StatusError,
    trailers: Trailers | None = None,
) -> NoReturn:
    """Ends the call with ``error``: its code, message and details.

    ``trailers`` replaces the error's own details trailer when a proxy relays
    an upstream status as it came (the upstream's details included).
    """
    metadata = tuple(trailers) if trailers else error.trailing_metadata()
    await context.abort(error.code, error.message, trailing_metadata=metadata)
    raise AssertionError("unreachable: context.abort raises")


def call_ended(error: Exception) -> bool:
    """Whether ``error`` is grpc.aio's answer to a write on a call that already ended:
    the caller cancelled it (or its deadline passed) an instant before, and grpc has
    not yet told the handler (``context.done()`` is still False). That is the caller
    leaving, not a fault. grpc.aio has no public name for the error."""
    return type(error).__name__ == "ExecuteBatchError"


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


def adapter_not_found(adapter: str, model: str, available: Sequence[str]) -> StatusError:
    """NOT_FOUND naming the LoRA adapter asked for, its model and the adapters it has."""
    known = ", ".join(available) if available else "none"
    return StatusError(
        grpc.StatusCode.NOT_FOUND,
        f"adapter {adapter!r} of model {model!r} not found; its adapters: {known}",
        reason="ADAPTER_NOT_FOUND",
        metadata={"adapter": adapter, "model": model, "available": ",".join(available)},
    )
