"""The HTTP front's translation at the edge, in process: vendor JSON into the contract's
request bytes, response messages into the vendor's JSON and events, errors into the
vendor's shape. (Their behaviour against live servers is in test_http_front*.py.)"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from switchyard.status import FieldViolation
from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.status import StatusError, invalid_argument
from switchyard_router.front import UpstreamStatusError
from switchyard_router.http_api import anthropic, openai
from switchyard_router.http_api.errors import HTTP_STATUS, anthropic_error, openai_error


def _body(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def _events(data: bytes) -> list[Any]:
    """The JSON payloads of server-sent events (``[DONE]`` as the string)."""
    payloads = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def _last(text: str, finish: pb.FinishReason) -> bytes:
    usage = pb.Usage(prompt_tokens=2, completion_tokens=3)
    last = pb.StreamGenerateResponse(text=text, finish_reason=finish, usage=usage)
    return last.SerializeToString()


def test_every_grpc_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


@pytest.mark.parametrize(("wait", "header"), [(0.2, "1"), (2.5, "3"), (30.0, "30")])
def test_retry_info_becomes_retry_after_in_whole_seconds_never_early(
    wait: float, header: str
) -> None:
    error = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry_after=wait)
    answer = openai_error(error)
    assert answer.status == 429 and ("retry-after", header) in answer.headers


def test_a_relayed_model_server_status_keeps_its_details() -> None:
    """An UpstreamStatusError carries the model server's own details trailer."""
    inner = invalid_argument(FieldViolation("sampling.stop", "more than 8"))
    relayed = UpstreamStatusError(inner.code, inner.message, inner.trailing_metadata())
    openai_body = json.loads(openai_error(relayed, openai.RENAMED).body)["error"]
    assert openai_body["param"] == "stop"
    assert openai_body["message"] == "invalid request: stop: more than 8"
    anthropic_body = json.loads(anthropic_error(relayed, anthropic.RENAMED).body)
    assert anthropic_body == {
        "type": "error",
        "error": {"type": "invalid_request_error",
                  "message": "invalid request: stop_sequences: more than 8"},
    }  # fmt: skip


def test_openai_chat_becomes_the_contracts_request() -> None:
    call = openai.ChatCompletions().call(
        _body(
            {
                "model": "m",
                "messages": [
                    {"role": "developer", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hi "},
                            {"type": "text", "text": "there"},
                        ],
                    },
                ],
                "max_tokens": 5,
                "max_completion_tokens": 7,
                "stop": "END",
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 2,
                "stream": True,
                "user": "someone",
            }
        )
    )
    assert call.streaming
    request = pb.StreamGenerateRequest.FromString(call.request)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    sampling = request.sampling
    assert sampling.max_tokens == 7  # max_completion_tokens wins
    assert list(sampling.stop) == ["END"]
    assert sampling.HasField("temperature") and sampling.temperature == 0
    assert sampling.logprobs == 2
    assert not sampling.HasField("top_p")  # unset stays unset: the model's default


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [], "temprature": 1}, "temprature"),
        ({"model": "m", "messages": [{"role": "user", "content": "x", "x": 1}]}, "messages[0].x"),
        ({"model": "m", "messages": [], "max_tokens": "ten"}, "max_tokens"),
        ({"messages": []}, "model"),
        ({"model": "m", "messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "messages": [], "tools": [{"type": "custom", "custom": {}}]},
            "tools[0].type",
        ),
        ({"model": "m", "messages": [], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"model": "m", "messages": [], "response_format": {"type": "yaml"}},
            "response_format.type",
        ),
        ({"model": "m", "messages": [], "functions": []}, "functions"),
        ({"model": "m", "messages": [], "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_bad_openai_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(StatusError) as raised:
        openai.ChatCompletions().call(_body(body))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details.field_violations[0].field == param


def test_openai_stream_events_in_order() -> None:
    call = openai.ChatCompletions().call(
        _body({"model": "m", "messages": [], "stream": True,
               "stream_options": {"include_usage": True}})
    )  # fmt: skip
    first = pb.StreamGenerateResponse(text="Hel").SerializeToString()
    events = _events(
        call.opening() + call.message(first) + call.message(_last("lo", pb.FINISH_REASON_LENGTH))
    )
    assert [e if e == "[DONE]" else e["choices"] for e in events] == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""},
          "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Hel"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "lo"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
        [],
        "[DONE]",
    ]  # fmt: skip
    assert events[4]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert all(e["usage"] is None for e in events[:4])
    assert len({e["id"] for e in events[:5]}) == 1
    assert call.closing() == b""  # the last message closed it


def test_a_stream_that_ends_without_its_last_message_still_closes() -> None:
    chat = openai.ChatCompletions().call(_body({"model": "m", "messages": [], "stream": True}))
    assert _events(chat.closing()) == ["[DONE]"]
    messages = anthropic.Messages().call(
        _body({"model": "m", "max_tokens": 5, "messages": [], "stream": True})
    )
    names = [line for line in messages.closing().decode().splitlines() if line.startswith("event")]
    assert names == [  # no content came: one empty text block, as Anthropic sends
        "event: content_block_start", "event: ping", "event: content_block_stop",
        "event: message_delta", "event: message_stop",
    ]  # fmt: skip


def test_openai_completions_logprobs_have_offsets() -> None:
    call = openai.Completions().call(_body({"model": "m", "prompt": ["x"], "logprobs": 1}))
    assert pb.GenerateRequest.FromString(call.request).prompt == "x"
    top = [pb.TopLogprob(text="ab", logprob=-0.5)]
    tokens = [pb.Token(text="ab", logprob=-0.5, top_logprobs=top), pb.Token(text="c", logprob=-1.0)]
    response = pb.GenerateResponse(text="abc", finish_reason=pb.FINISH_REASON_STOP, tokens=tokens)
    choice = json.loads(call.answer(response.SerializeToString()))["choices"][0]
    assert choice["logprobs"] == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{"ab": -0.5}, {}],
        "text_offset": [0, 2],
    }
    assert choice["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        (pb.FINISH_REASON_STOP, "end_turn"),
        (pb.FINISH_REASON_STOP_SEQUENCE, "stop_sequence"),
        (pb.FINISH_REASON_LENGTH, "max_tokens"),
        (pb.FINISH_REASON_CONTENT_FILTER, "refusal"),
    ],
)
def test_anthropic_stop_reasons(finish: pb.FinishReason, stop_reason: str) -> None:
    call = anthropic.Messages().call(_body({"model": "m", "max_tokens": 5, "messages": []}))
    response = pb.GenerateResponse(text="t", finish_reason=finish)
    assert json.loads(call.answer(response.SerializeToString()))["stop_reason"] == stop_reason


def test_anthropic_system_blocks_and_content_blocks_are_joined() -> None:
    call = anthropic.Messages().call(
        _body(
            {
                "model": "m",
                "max_tokens": 9,
                "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "x"}}],
                    }
                ],
                "stop_sequences": ["\n\n"],
                "top_k": 3,
            }
        )
    )
    request = pb.GenerateRequest.FromString(call.request)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert request.sampling.max_tokens == 9 and request.sampling.top_k == 3
    assert list(request.sampling.stop) == ["\n\n"]
