"""Reading Hermes tool calls out of streamed text (the llamacpp backend's parser), as
the text arrives in pieces of every size."""

from __future__ import annotations

import random

import pytest

from switchyard_modelserver.domain import ToolCallDelta
from switchyard_modelserver.tools.hermes import HermesToolCallParser


def _parse(text: str, largest_piece: int, seed: int = 0) -> tuple[str, list[ToolCallDelta]]:
    parser = HermesToolCallParser()
    pieces = random.Random(seed)
    out, deltas, at = [], [], 0
    while at < len(text):
        size = pieces.randint(1, largest_piece)
        piece_text, piece_deltas = parser.feed(text[at : at + size])
        out.append(piece_text)
        deltas += piece_deltas
        at += size
    rest, rest_deltas = parser.finish()
    return "".join(out) + rest, deltas + rest_deltas


def _calls(deltas: list[ToolCallDelta]) -> dict[str, str]:
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for delta in deltas:
        if delta.name:
            names[delta.index] = delta.name
        assert delta.index in names, "a call's arguments came before its name"
        arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    return {names[i]: arguments[i] for i in names}


CASES = [
    (
        'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "Sure.",
        {"get_weather": '{"city": "Paris"}'},
    ),
    (  # the end tag inside an argument string does not end the call
        '<tool_call>{"name": "echo", "arguments": {"text": "a </tool_call> b \\"q\\""}}'
        "</tool_call>",
        "",
        {"echo": '{"text": "a </tool_call> b \\"q\\""}'},
    ),
    (  # arguments before the name are held back until the name is known
        '<tool_call>{"arguments": {"n": [1, {"m": 2}]}, "name": "f"}</tool_call>',
        "",
        {"f": '{"n": [1, {"m": 2}]}'},
    ),
    (  # whitespace between calls is dropped; text after them is not
        '<tool_call>{"name":"a","arguments":{}}</tool_call>\n\n'
        '<tool_call>{"name":"b","arguments":{}}</tool_call> Done.',
        " Done.",
        {"a": "{}", "b": "{}"},
    ),
    ("No call here, only a < sign and <tool", "No call here, only a < sign and <tool", {}),
]


@pytest.mark.parametrize(("text", "expected_text", "expected_calls"), CASES)
@pytest.mark.parametrize("largest_piece", [1, 2, 5, 1000])
def test_calls_and_text_come_out_whatever_the_pieces(
    text: str, expected_text: str, expected_calls: dict[str, str], largest_piece: int
) -> None:
    out, deltas = _parse(text, largest_piece)
    assert out == expected_text
    assert _calls(deltas) == expected_calls
    assert all(d.id.startswith("call_") for d in deltas if d.name)


def test_an_unfinished_call_sends_what_it_has() -> None:
    out, deltas = _parse('<tool_call>{"name": "f", "arguments": {"a": "unfin', 3)
    assert out == ""
    assert _calls(deltas) == {"f": '{"a": "unfin'}
