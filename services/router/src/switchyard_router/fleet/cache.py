"""The response cache: which requests may be answered again, under which key, and the
in-memory store (the Redis one is in ``redis_state``).

A route opts in with ``cache:``. A request is looked up when it is deterministic
(temperature 0, or a seed; any request with ``nondeterministic: true``) and its
caller did not send ``cache-control: no-cache``. The key is a SHA-256 of the
method, the cache scope (the caller's key, or shared), the route with its targets
(the models that may answer) and the request's bytes, which hold everything that
shapes the answer (input, sampling, tools, response format, adapter, token ids
asked for); metadata does not key it. An answer is kept when it finished well
(stop, length, stop sequence, content filter, tool calls) and fits
``max_entry_bytes``; a hit replays its messages as they were, to unary calls and
streams alike, and costs no model tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from switchyard_router import metrics
from switchyard_router.request_path import wire

_UNARY, _STREAM = b"\x00", b"\x01"
# FinishReason: STOP, LENGTH, STOP_SEQUENCE, CONTENT_FILTER, TOOL_CALLS (an answer that
# calls a tool ended as well as any; not CANCELLED or ERROR).
_REPLAYABLE = frozenset({1, 2, 3, 6, 7})
CACHE_CONTROL = "cache-control"


def cache_key(streaming: bool, scope: str, route: str, request: bytes) -> bytes:
    """The key of a request's cached answer (``route``: the route and its targets)."""
    digest = hashlib.sha256(_STREAM if streaming else _UNARY)
    for part in (scope.encode(), route.encode()):
        digest.update(len(part).to_bytes(4, "big"))
        digest.update(part)
    digest.update(request)
    return digest.digest()


def cache_directives(metadata: Iterable[tuple[str, str | bytes]]) -> frozenset[str]:
    """The caller's ``cache-control`` directives (``no-cache``: do not replay;
    ``no-store``: do not replay or keep)."""
    for key, value in metadata:
        if key == CACHE_CONTROL and isinstance(value, str):
            return frozenset(part.strip().lower() for part in value.split(","))
    return frozenset()


def encode_entry(streaming: bool, messages: Sequence[bytes]) -> bytes:
    """An answer's messages as one stored value."""
    if not streaming:
        return _UNARY + messages[0]
    parts = [_STREAM]
    for message in messages:
        parts.append(len(message).to_bytes(4, "big"))
        parts.append(message)
    return b"".join(parts)


def decode_entry(entry: bytes, streaming: bool) -> list[bytes] | None:
    """The messages of a stored value (None if it is not an answer of this kind)."""
    if entry[:1] != (_STREAM if streaming else _UNARY):
        return None
    if not streaming:
        return [entry[1:]]
    messages = []
    pos = 1
    while pos + 4 <= len(entry):
        size = int.from_bytes(entry[pos : pos + 4], "big")
        messages.append(entry[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return messages if pos == len(entry) else None


class CacheRecorder:
    """Keeps a miss's answer as it is relayed, to store it if it ends well."""

    __slots__ = ("_limit", "_messages", "_size", "key", "model", "streaming", "ttl_seconds")

    def __init__(
        self, key: bytes, ttl_seconds: float, model: str, streaming: bool, max_bytes: int
    ) -> None:
        self.key = key
        self.ttl_seconds = ttl_seconds
        self.model = model
        self.streaming = streaming
        self._limit = max_bytes
        self._messages: list[bytes] | None = []
        self._size = 0

    def add(self, message: bytes) -> None:
        """Records one relayed message (the answer is dropped once it is too big)."""
        if self._messages is None:
            return
        self._size += len(message) + 4
        if self._size > self._limit:
            self._messages = None
        else:
            self._messages.append(message)

    def entry(self) -> bytes | None:
        """The value to store: None unless the whole answer was recorded and ended well."""
        if not self._messages:
            return None
        field = wire.STREAM_FINISH_FIELD if self.streaming else wire.GENERATE_FINISH_FIELD
        if wire.read_finish_reason(self._messages[-1], field) not in _REPLAYABLE:
            return None
        return encode_entry(self.streaming, self._messages)


class MemoryCache:
    """Answers kept in this process: least recently used go first past ``max_entries``
    or ``max_bytes``; each expires after its TTL."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, key: bytes) -> bytes | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, entry = found
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, entry: bytes, ttl_seconds: float) -> None:
        if len(entry) > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl_seconds, entry)
        self._bytes += len(entry)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._report()

    def _drop(self, key: bytes) -> None:
        _, entry = self._entries.pop(key)
        self._bytes -= len(entry)
        self._report()

    def _report(self) -> None:
        metrics.CACHE_ENTRIES.set(len(self._entries))
        metrics.CACHE_BYTES.set(self._bytes)

    def __len__(self) -> int:
        return len(self._entries)
