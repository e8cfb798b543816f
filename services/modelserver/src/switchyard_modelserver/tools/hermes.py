"""Reads tool calls out of generated text in the Hermes format, as it streams.

    Some text.<tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Hermes tags are what Qwen2.5/3, Hermes and many fine-tunes emit, and what the
local backends teach a model whose chat template knows no tools. Text outside
the tags is the reply's text; each tagged call becomes :class:`ToolCallDelta`
pieces: first the id and name, then the arguments' JSON text in fragments,
exactly as it was generated (so fragments joined equal the unary answer).

The JSON inside a tag is scanned incrementally, aware of strings and nesting:
a ``</tool_call>`` inside an argument string does not end the call (a bug
vLLM's own Hermes parser had), and a call whose arguments come before its
name is held back until the name is known.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from switchyard_modelserver.domain import BackendEvent, Delta, Finish, FinishReason, ToolCallDelta

START = "<tool_call>"
END = "</tool_call>"
_ARGUMENT_KEYS = ("arguments", "parameters")


def new_call_id() -> str:
    """A tool call id in OpenAI's shape (``call_`` and 24 random characters)."""
    return "call_" + secrets.token_hex(12)


@dataclass
class _Call:
    """The JSON object of one call, scanned character by character."""

    index: int
    id: str = field(default_factory=new_call_id)
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    string: list[str] = field(default_factory=list)  # the depth-1 string being read
    key: str | None = None  # the depth-1 key whose value is being read
    expecting_key: bool = True
    value_depth: int | None = None  # depth where the current depth-1 value started
    name: str | None = None
    arguments: list[str] = field(default_factory=list)  # not yet sent
    in_arguments: bool = False
    started: bool = False  # the name delta was sent
    done: bool = False


class HermesToolCallParser:
    """Feeds generated text, returns (text, tool call deltas) ready to send."""

    def __init__(self) -> None:
        self._pending = ""  # text that may be the start of a tag
        self._call: _Call | None = None
        self._calls = 0
        self._after_call = False  # whitespace after a call is dropped if another follows
        self.called = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        buffer = self._pending + text
        self._pending = ""
        position = 0
        while position < len(buffer):
            call = self._call
            if call is None and self._after_call:
                rest = buffer[position:]
                stripped = rest.lstrip()
                if not stripped or START.startswith(stripped[: len(START)]):
                    # Only whitespace so far, or (the start of) another call: hold it.
                    if not stripped or stripped.startswith(START):
                        position += len(rest) - len(stripped)
                        if not stripped:
                            self._pending = rest
                            break
                        self._after_call = False
                        continue
                    self._pending = rest
                    break
                self._after_call = False
            if call is None:
                start = buffer.find(START, position)
                if start < 0:
                    keep = _partial_suffix(buffer[position:], START)
                    out.append(buffer[position : len(buffer) - keep])
                    self._pending = buffer[len(buffer) - keep :]
                    break
                out.append(buffer[position:start])
                position = start + len(START)
                self._call = _Call(self._calls)
                self._calls += 1
                self.called = True
                continue
            if call.done:
                end = buffer.find(END, position)
                if end < 0:
                    keep = _partial_suffix(buffer[position:], END)
                    self._pending = buffer[len(buffer) - keep :]
                    break  # whitespace between the object and the end tag
                position = end + len(END)
                self._call = None
                self._after_call = True
                continue
            position = self._scan(call, buffer, position, deltas)
        return "".join(out), deltas

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left at the end of generation: a held-back partial tag is text; an
        unfinished call sends what it has (its arguments may then not parse)."""
        deltas: list[ToolCallDelta] = []
        call = self._call
        if call is not None and not call.started and (call.name or call.arguments):
            self._start(call, deltas)
        if call is not None and call.started and call.arguments:
            deltas.append(ToolCallDelta(call.index, arguments="".join(call.arguments)))
            call.arguments.clear()
        text = "" if call is not None or self._after_call else self._pending
        self._pending = ""
        return text, deltas

    def _start(self, call: _Call, deltas: list[ToolCallDelta]) -> None:
        call.started = True
        deltas.append(ToolCallDelta(call.index, id=call.id, name=call.name or ""))

    def _scan(self, call: _Call, text: str, position: int, deltas: list[ToolCallDelta]) -> int:
        """Scans ``text`` from ``position`` until the call's object closes or the text
        ends; returns where it stopped. Arguments text goes to ``call.arguments``."""
        argument_start = position if call.in_arguments else None
        while position < len(text) and not call.done:
            char = text[position]
            position += 1
            if call.in_string:
                if call.escaped:
                    call.escaped = False
                elif char == "\\":
                    call.escaped = True
                elif char == '"':
                    call.in_string = False
                    if call.depth == 1:
                        argument_start = self._depth_one_string(
                            call, "".join(call.string), text, argument_start, position
                        )
                        call.string.clear()
                        continue
                if call.depth == 1:
                    call.string.append(char)
            elif char == '"':
                call.in_string = True
                if call.depth == 1 and not call.expecting_key and call.key in _ARGUMENT_KEYS:
                    call.in_arguments = True  # arguments given as a string: kept as sent
                    argument_start = position - 1
            elif char in "{[":
                call.depth += 1
                if call.depth == 2 and not call.expecting_key and call.key in _ARGUMENT_KEYS:
                    call.in_arguments = True
                    argument_start = position - 1
            elif char in "}]":
                call.depth -= 1
                if call.depth == 1 and call.in_arguments:
                    call.arguments.append(text[argument_start:position])
                    argument_start = None
                    call.in_arguments = False
                elif call.depth == 0:
                    call.done = True
            elif call.depth == 1:
                if char == ":":
                    call.expecting_key = False
                elif char == ",":
                    call.expecting_key = True
                    call.key = None
        if call.in_arguments and argument_start is not None:
            call.arguments.append(text[argument_start:position])
        if call.name is not None:
            if not call.started:
                self._start(call, deltas)
            if call.arguments:
                deltas.append(ToolCallDelta(call.index, arguments="".join(call.arguments)))
                call.arguments.clear()
        return position

    def _depth_one_string(
        self, call: _Call, value: str, text: str, argument_start: int | None, position: int
    ) -> int | None:
        """A string at the call object's own level ended: a key, the name, or string
        arguments. Returns where unsent arguments text starts now."""
        if call.expecting_key:
            call.key = value
        elif call.key == "name" and call.name is None:
            call.name = _unescape(value)
        elif call.in_arguments and argument_start is not None:
            call.arguments.append(text[argument_start:position])
            call.in_arguments = False
            return None
        return argument_start


def _partial_suffix(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-length:]):
            return length
    return 0


def _unescape(value: str) -> str:
    try:
        return str(json.loads(f'"{value}"'))
    except ValueError:
        return value


async def tool_call_events(
    events: AsyncIterator[BackendEvent],
) -> AsyncGenerator[BackendEvent, None]:
    """``events`` with their text read for Hermes tool calls: call text leaves the
    text and comes back as tool call pieces, and a generation that called tools
    and then stopped ends with TOOL_CALLS."""
    parser = HermesToolCallParser()
    async for event in events:
        if isinstance(event, Delta):
            text, calls = parser.feed(event.text)
            yield dataclasses.replace(event, text=text, tool_calls=calls)
        elif isinstance(event, Finish):
            text, calls = parser.finish()
            if text or calls:
                yield Delta(text, 0, tool_calls=calls)
            if parser.called and event.reason is FinishReason.STOP:
                event = dataclasses.replace(event, reason=FinishReason.TOOL_CALLS)
            yield event
        else:
            yield event
