"""Switchyard's Python SDK: clients, typed results and errors for switchyard.v1."""

from switchyard.chains import Chain, LLMChain, SequentialChain
from switchyard.client import AsyncClient, AsyncStream, BatchInput, Client, Stream
from switchyard.errors import (
    APIError,
    AuthenticationError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalServerError,
    InvalidArgumentError,
    MissingVariablesError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelledError,
    SwitchyardError,
    TemplateError,
    UnavailableError,
)
from switchyard.templates import ChatPromptTemplate, PromptTemplate
from switchyard.types import (
    Completion,
    FinishReason,
    Message,
    ModelInfo,
    StreamChunk,
    Timings,
    Usage,
)
from switchyard.usage import UsageCallback, UsageEvent, UsageMeter

__all__ = [
    "APIError",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BatchInput",
    "Chain",
    "ChatPromptTemplate",
    "Client",
    "Completion",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FinishReason",
    "InternalServerError",
    "InvalidArgumentError",
    "LLMChain",
    "Message",
    "MissingVariablesError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "PromptTemplate",
    "RateLimitError",
    "RequestCancelledError",
    "SequentialChain",
    "Stream",
    "StreamChunk",
    "SwitchyardError",
    "TemplateError",
    "Timings",
    "UnavailableError",
    "Usage",
    "UsageCallback",
    "UsageEvent",
    "UsageMeter",
]
