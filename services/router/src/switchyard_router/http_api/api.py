"""What the HTTP front asks of each vendor API it speaks (OpenAI chat and completions,
Anthropic messages): turn a JSON body into the contract's request bytes, and the
contract's response messages into that API's JSON or server-sent events."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from switchyard_common.status import StatusError
from switchyard_router.http_api.errors import HttpError, unsupported
from switchyard_router.http_api.json_body import JsonBody


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


Body = TypeVar("Body")
Call = TypeVar("Call", bound=ApiCall)


class JsonApi(Generic[Body, Call]):
    """An endpoint of a vendor API: its JSON body's shape, the call that translates a
    decoded body, and its errors' shape."""

    def __init__(
        self,
        shape: type[Body],
        call: Callable[[Body], Call],
        error: Callable[[StatusError], HttpError],
    ) -> None:
        self._body = JsonBody(shape)
        self._call = call
        self._error = error

    def call(self, body: bytes) -> Call:
        """The request's translation, or INVALID_ARGUMENT naming a bad field."""
        return self._call(self._body.decode(body))

    def error(self, error: StatusError) -> HttpError:
        """An error answer in this API's shape."""
        return self._error(error)


def joined_text(field: str, parts: list[dict[str, Any]], what: str) -> str:
    """The text of a content list (OpenAI's parts, Anthropic's blocks), joined; any other
    kind is INVALID_ARGUMENT naming its place (``field[2]``)."""
    texts = []
    for index, part in enumerate(parts):
        kind = part.get("type")
        if kind != "text" or not isinstance(part.get("text"), str):
            raise unsupported(
                f"{field}[{index}]", f"{what} of type {kind!r} are not supported (only text)"
            )
        texts.append(part["text"])
    return "".join(texts)


def response_id(prefix: str) -> str:
    """A fresh id for a response (``chatcmpl-…``, ``msg_…``)."""
    return prefix + os.urandom(12).hex()


def now() -> int:
    """Unix seconds, for ``created``."""
    return int(time.time())
