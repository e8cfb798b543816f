"""Switchyard's Python SDK: clients, typed results and errors for switchyard.v1."""

from switchyard.client import AsyncClient, AsyncStream, Client, Stream
from switchyard.errors import (
    APIError,
    AuthenticationError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    SwitchyardError,
    UnavailableError,
)
from switchyard.types import (
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    StreamChunk,
    Timings,
    Usage,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "Client",
    "Completion",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FinishReason",
    "InternalServerError",
    "InvalidArgumentError",
    "Message",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestCancelledError",
    "Stream",
    "StreamChunk",
    "SwitchyardError",
    "Timings",
    "UnavailableError",
    "Usage",
]
