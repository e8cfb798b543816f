"""What the HTTP front asks of each vendor API it speaks (OpenAI chat and completions,
Anthropic messages): turn a JSON body into the contract's request bytes, and the
contract's response messages into that API's JSON or server-sent events."""

from __future__ import annotations

import os
import time
from typing import Protocol

from switchyard_common.status import StatusError
from switchyard_router.http_api.errors import HttpError


class ApiCall(Protocol):
    """One request of a vendor API, translated; it renders that request's answer."""

    streaming: bool
    """StreamGenerate (server-sent events) or Generate (one JSON answer)."""
    request: bytes
    """The serialized GenerateRequest, StreamGenerateRequest or CountTokensRequest."""
    counts_tokens: bool
    """CountTokens rather than a generation."""

    def answer(self, response: bytes) -> bytes:
        """The JSON body for a GenerateResponse's bytes."""
        ...

    def opening(self) -> bytes:
        """Events sent once the first stream message has arrived, before its own."""
        ...

    def message(self, message: bytes) -> bytes:
        """Events for one StreamGenerateResponse's bytes (the last one's include the
        closing events)."""
        ...

    def closing(self) -> bytes:
        """Closing events for a stream that ended without a last message (else b"")."""
        ...

    def failure(self, error: StatusError) -> bytes:
        """An error event, for a stream that fails after it started."""
        ...


class Api(Protocol):
    """A vendor API's requests and errors."""

    def call(self, body: bytes) -> ApiCall:
        """The request's translation, or INVALID_ARGUMENT naming a bad field."""
        ...

    def error(self, error: StatusError) -> HttpError:
        """An error answer in this API's shape."""
        ...


def response_id(prefix: str) -> str:
    """A fresh id for a response (``chatcmpl-…``, ``msg_…``)."""
    return prefix + os.urandom(12).hex()


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())
