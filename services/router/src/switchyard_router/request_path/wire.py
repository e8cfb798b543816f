"""Just enough protobuf wire format to route a request without parsing it.

The router forwards request bytes untouched; it needs only field 1, `model`,
of GenerateRequest / StreamGenerateRequest (the contract keeps it field 1 in
both). Encoders write fields in number order, so it is nearly always the first
bytes of the message. The scan skips over each top-level field (a request has
a handful), so its cost does not grow with the prompt's size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

_MODEL_TAG = (1 << 3) | 2  # field 1, length-delimited
_ADAPTER_TAG = (13 << 3) | 2  # field 13 of Generate/StreamGenerateRequest: the LoRA adapter


class MalformedRequestError(ValueError):
    """The request bytes are not a valid protobuf message."""


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    return _varint(data, pos)


def skip(data: bytes, pos: int, wire_type: int) -> int:
    """The position after a field's value of ``wire_type`` (not length-delimited)
    that starts at ``pos``."""
    if wire_type == 0:
        return _varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    if wire_type == 2:
        length, pos = _varint(data, pos)
        return pos + length
    raise MalformedRequestError(f"unsupported wire type {wire_type}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedRequestError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def fields(
    data: bytes, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, int, int, int]]:
    """(key, field start, value start, value end) of each field of the message in
    ``data[start:end]`` (all of ``data`` by default), in order, without copying; the
    value of a length-delimited field is its bytes without the length."""
    pos = start
    end = len(data) if end is None else end
    while pos < end:
        start = pos
        key, pos = _varint(data, pos)
        wire_type = key & 7
        value_start = pos
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, value_start = _varint(data, pos)
            pos = value_start + length
        elif wire_type == 5:
            pos += 4
        else:
            raise MalformedRequestError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise MalformedRequestError("field runs past the end of the message")
        yield key, start, value_start, pos


def _model_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(field start, value start, value end) of every `model` field occurrence."""
    return [(start, value, end) for key, start, value, end in fields(data) if key == _MODEL_TAG]


def read_model(data: bytes) -> str:
    """The request's model name ('' if unset); the last occurrence wins, as in protobuf."""
    spans = _model_spans(data)
    if not spans:
        return ""
    _, value_start, value_end = spans[-1]
    return _decode(data[value_start:value_end])


def read_model_and_adapter(data: bytes) -> tuple[str, str]:
    """The request's model name and LoRA adapter ('' if unset), in one scan of its
    top-level fields; the last occurrence of each wins, as in protobuf."""
    model = adapter = None
    for key, _, value_start, value_end in fields(data):
        if key == _MODEL_TAG:
            model = (value_start, value_end)
        elif key == _ADAPTER_TAG:
            adapter = (value_start, value_end)
    return (
        "" if model is None else _decode(data[model[0] : model[1]]),
        "" if adapter is None else _decode(data[adapter[0] : adapter[1]], "adapter"),
    )


def with_model(data: bytes, model: str) -> bytes:
    """The same request with `model` replaced."""
    encoded = model.encode()
    head = bytes([_MODEL_TAG]) + _encode_varint(len(encoded)) + encoded
    rest = bytearray()
    pos = 0
    for start, _, value_end in _model_spans(data):
        rest += data[pos:start]
        pos = value_end
    rest += data[pos:]
    return head + bytes(rest)


def _decode(raw: bytes, name: str = "model") -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MalformedRequestError(f"{name} is not valid UTF-8") from None


GENERATE_USAGE_FIELD = 4  # GenerateResponse.usage
STREAM_USAGE_FIELD = 5  # StreamGenerateResponse.usage (only the last message has it)


def _field(data: bytes, number: int) -> bytes | None:
    """The bytes of the last length-delimited field ``number`` at the top level (or None)."""
    found = None
    tag = (number << 3) | 2
    for key, _, value_start, value_end in fields(data):
        if key == tag:
            found = data[value_start:value_end]
    return found


def read_usage_tokens(data: bytes, usage_field: int) -> int:
    """Prompt + completion tokens of a response's ``usage`` (0 when it has none).

    Skips over every other top-level field, so the cost does not grow with the
    text's length: what lets the router count tokens for quotas cheaply.
    """
    try:
        usage = _field(data, usage_field)
        if not usage:
            return 0
        total = 0
        pos = 0
        while pos < len(usage):
            key, pos = _varint(usage, pos)
            if key & 7 != 0:
                return 0  # not the Usage the contract defines
            value, pos = _varint(usage, pos)
            if key >> 3 in (1, 2) and value < 2**31:  # prompt_tokens, completion_tokens
                total += value
        return total
    except MalformedRequestError:
        return 0


_SAMPLING_TAG = (4 << 3) | 2  # GenerateRequest.sampling / StreamGenerateRequest.sampling
_INCLUDE_TOKEN_IDS_TAG = 6 << 3  # include_token_ids, a varint
_STREAM_TEXT_TAG = (1 << 3) | 2  # StreamGenerateResponse.text
_STREAM_TOKENS_TAG = (2 << 3) | 2  # StreamGenerateResponse.tokens (one field per token)
GENERATE_FINISH_FIELD = 2  # GenerateResponse.finish_reason
STREAM_FINISH_FIELD = 3  # StreamGenerateResponse.finish_reason


@dataclass(frozen=True, slots=True)
class RequestSampling:
    """What admission needs of a request's sampling, read from its bytes: whether its
    answer can be replayed (greedy or seeded), what it may cost, and whether the
    caller asked for per-token details."""

    temperature: float | None
    """None: unset (the model's default)."""
    seeded: bool
    max_tokens: int | None
    logprobs: bool
    include_token_ids: bool

    @property
    def deterministic(self) -> bool:
        """Temperature 0, or a seed: the same request gets the same answer."""
        return self.temperature == 0.0 or self.seeded

    @property
    def wants_tokens(self) -> bool:
        """Whether the caller's stream messages carry ``tokens`` (ids or logprobs)."""
        return self.logprobs or self.include_token_ids


def read_sampling(data: bytes) -> RequestSampling:
    """The sampling facts of a GenerateRequest or StreamGenerateRequest (last value
    wins, as in protobuf); MalformedRequestError for bytes that are not one."""
    temperature: float | None = None
    seeded = logprobs = include_token_ids = False
    max_tokens: int | None = None
    for key, _, value_start, value_end in fields(data):
        if key == _INCLUDE_TOKEN_IDS_TAG:
            include_token_ids = _varint(data, value_start)[0] != 0
        elif key == _SAMPLING_TAG:
            sampling = data[value_start:value_end]
            for s_key, _, s_start, _ in fields(sampling):
                number = s_key >> 3
                if s_key == (1 << 3) | 5:  # temperature, a float
                    temperature = struct.unpack_from("<f", sampling, s_start)[0]
                elif s_key == 4 << 3:  # max_tokens
                    max_tokens = _int32(_varint(sampling, s_start)[0])
                elif number == 6:  # seed
                    seeded = True
                elif number == 10:  # logprobs
                    logprobs = True
    return RequestSampling(temperature, seeded, max_tokens, logprobs, include_token_ids)


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def read_stream_tokens(message: bytes) -> tuple[int, int]:
    """(entries in ``tokens``, bytes of ``text``) of a StreamGenerateResponse: how many
    tokens it carries, when the model server sent token ids, and its text's size
    otherwise. (0, 0) for bytes that are not one."""
    tokens = text = 0
    try:
        for key, _, value_start, value_end in fields(message):
            if key == _STREAM_TOKENS_TAG:
                tokens += 1
            elif key == _STREAM_TEXT_TAG:
                text = value_end - value_start
    except MalformedRequestError:
        return 0, 0
    return tokens, text


def without_tokens(message: bytes) -> bytes:
    """A StreamGenerateResponse without its ``tokens`` (the router asked for them; the
    caller did not), cut out of the bytes rather than re-encoded."""
    kept = bytearray()
    pos = 0
    for key, start, _, end in fields(message):
        if key == _STREAM_TOKENS_TAG:
            kept += message[pos:start]
            pos = end
    if pos == 0:
        return message
    kept += message[pos:]
    return bytes(kept)


def read_finish_reason(message: bytes, finish_field: int) -> int:
    """The response's ``finish_reason`` enum value (0: unset, or not a response)."""
    tag = finish_field << 3
    reason = 0
    try:
        for key, _, value_start, _ in fields(message):
            if key == tag:
                reason = _varint(message, value_start)[0]
    except MalformedRequestError:
        return 0
    return reason
