"""Reading a request's JSON body into its API's typed shape, strictly.

msgspec decodes and validates in one pass (in C): a body that is not JSON, a field
of the wrong type, a missing required field or a field the API does not have is
INVALID_ARGUMENT naming it (``messages[0].content``), which the front answers 400.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec

from switchyard_common.status import StatusError
from switchyard_router.http_api.errors import bad_field

T = TypeVar("T")

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`")


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A JSON object of an API: a field it does not define is refused by name."""


class JsonBody(Generic[T]):
    """Decodes request bodies into ``shape``."""

    def __init__(self, shape: type[T]) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(shape)

    def decode(self, body: bytes) -> T:
        """The body as ``shape``, or INVALID_ARGUMENT naming what is wrong."""
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as error:
            raise _violation(str(error)) from None
        except msgspec.DecodeError as error:
            raise bad_field("body", f"is not valid JSON: {error}") from None


def _violation(text: str) -> StatusError:
    match = _AT.match(text)
    what = match["what"] if match else text
    path = (match["path"] or "") if match else ""
    path = path.removeprefix(".")
    patterns = ((_UNKNOWN, "is not a field of this API"), (_MISSING, "is required"))
    for pattern, description in patterns:
        named = pattern.match(what)
        if named:
            field = f"{path}.{named['name']}" if path else named["name"]
            return bad_field(field, description)
    description = what.replace("`", "")
    return bad_field(path or "body", description[0].lower() + description[1:])


def encode(value: Any) -> bytes:
    """JSON bytes of ``value`` (msgspec: structs, dicts, lists, strings, numbers)."""
    return msgspec.json.encode(value)
