"""Affinity keys: which requests should go to the same model server.

Read only for a ``policy: prefix_affinity`` route, at admission, into the
request's ``RequestView.affinity_key`` (the picker places it: ``picker``):

- **Session**: with ``affinity.session_metadata_key`` set (say ``x-session-id``),
  a request that carries that metadata key has the session as its key, whatever
  its content.
- **Prefix**: otherwise, the request's leading content, where an engine's prefix
  cache pays off: for a chat, the system message(s) and the first user message;
  for a prompt, its start. Each part counts up to ``prefix_bytes`` bytes, in whole
  ``block_bytes`` blocks (all of it when shorter than one block), as engines cache
  prompts in fixed-size blocks. Every turn of a conversation repeats its system
  message and first user message, so it keeps its key from its first turn on, while
  two conversations that share only a system prompt get different keys and spread.
  ``prefix_bytes: 0`` turns prefix keys off (sessions only).

The cost: the request is not parsed. The scan reads the top-level fields' tags
and lengths (``wire``), and of each leading chat message only its role and
content; later messages, sampling and the rest are skipped by length, so the cost
grows with the few bytes hashed (at most two parts of ``prefix_bytes``), not with
the conversation: about 6 µs for a 2.8 KB, 5-turn chat on the 2-core build machine
(``benchmarks/routing.py``). Besides the model name, the only other place that
reads a request is resume (``resume``), which parses it whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from switchyard_router.request_path import wire

_PROMPT = (2 << 3) | 2  # GenerateRequest.prompt / StreamGenerateRequest.prompt
_MESSAGE = (3 << 3) | 2  # .messages (repeated ChatMessage)
_ROLE = (1 << 3) | 2  # ChatMessage.role
_CONTENT = (2 << 3) | 2  # ChatMessage.content
_USER = b"user"
_SYSTEM = (b"system", b"developer")


@dataclass(frozen=True, slots=True)
class AffinityKeys:
    """How a route reads affinity keys (its ``affinity:`` config)."""

    session_metadata_key: str | None = None
    prefix_bytes: int = 1024
    block_bytes: int = 256

    def key(self, request: bytes, metadata: Collection[Any]) -> bytes | None:
        """The request's affinity key (None: it has none, or its bytes do not read as
        a request, which the model server will refuse with the reason)."""
        session_key = self.session_metadata_key
        if session_key is not None:
            for name, value in metadata:
                if name == session_key:
                    raw = value if isinstance(value, bytes) else value.encode()
                    return _digest(b"session\0", raw)
        if not self.prefix_bytes:
            return None
        try:
            return self.prefix_key(request)
        except wire.MalformedRequestError:
            return None

    def prefix_key(self, request: bytes) -> bytes | None:
        """The key of the request's leading content (None: it has none).

        One pass over the top-level fields, by hand rather than with
        ``wire.fields`` (a generator, and a call per varint, cost several µs at
        this size): a prompt ends it at once, chat messages are read until the
        first that is not a system message, and everything after is never looked
        at."""
        parts: list[bytes | memoryview] = []
        view = memoryview(request)  # slices of it copy nothing
        pos, end = 0, len(request)
        while pos < end:
            key, pos = _tag_or_length(request, pos)
            if key & 7 != 2:  # not length-delimited: the model name and the prompt are
                pos = wire.skip(request, pos, key & 7)
                continue
            length, pos = _tag_or_length(request, pos)
            value_end = pos + length
            if value_end > end:
                raise wire.MalformedRequestError("field runs past the end of the message")
            if key == _PROMPT:
                return _digest(b"prompt\0", view[pos : self._leading_end(pos, value_end)])
            if key == _MESSAGE:
                role, content_start, content_end = _message(request, pos, value_end)
                if role in _SYSTEM or role == _USER:
                    leading = view[content_start : self._leading_end(content_start, content_end)]
                    parts += (role, b"\0", leading, b"\0")
                if role not in _SYSTEM:
                    break  # the first turn that is not a system message ends the prefix
            pos = value_end
        return _digest(*parts) if parts else None

    def _leading_end(self, start: int, end: int) -> int:
        """Where the leading part of ``[start, end)`` ends: up to ``prefix_bytes``, in
        whole blocks (all of it when it is shorter than one block)."""
        length = min(end - start, self.prefix_bytes)
        if length >= self.block_bytes:
            length -= length % self.block_bytes
        return start + length


def _tag_or_length(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` (a tag or a length) and the position after it; one byte
    (any value under 128: every tag here, short strings' lengths) the short way."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    return wire.varint(data, pos)


def _message(request: bytes, start: int, end: int) -> tuple[bytes, int, int]:
    """The role, and where the content is, of the ChatMessage in ``request[start:end]``."""
    role = b""
    content_start = content_end = start
    pos = start
    while pos < end:
        key, pos = _tag_or_length(request, pos)
        if key & 7 != 2:
            pos = wire.skip(request, pos, key & 7)
            continue
        length, pos = _tag_or_length(request, pos)
        if pos + length > end:
            raise wire.MalformedRequestError("field runs past the end of the message")
        if key == _ROLE:
            role = request[pos : pos + length]
        elif key == _CONTENT:
            content_start, content_end = pos, pos + length
        pos += length
    return role, content_start, content_end


def _digest(*parts: bytes | memoryview) -> bytes:
    """128 bits of SHA-256 (hardware-assisted on current CPUs: about twice as fast
    here as BLAKE2b on a few KB)."""
    return hashlib.sha256(b"".join(parts)).digest()[:16]
