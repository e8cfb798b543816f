"""Switchyard's Python SDK: clients, typed results and errors for switchyard.v1."""

from switchyard.client import AsyncClient, Client
from switchyard.errors import (
    APIError,
    AuthenticationError,
    DeadlineExceededError,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    SwitchyardError,
    UnavailableError,
)
from switchyard.types import Completion, FinishReason, Message, ModelInfo, StreamChunk, Timings, Usage

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Completion",
    "DeadlineExceededError",
    "FinishReason",
    "InternalServerError",
    "InvalidArgumentError",
    "Message",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestCancelledError",
    "StreamChunk",
    "SwitchyardError",
    "Timings",
    "UnavailableError",
    "Usage",
]
