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
from switchyard_router.fronts.front import UpstreamStatusError
from switchyard_router.http_api import anthropic, openai
from switchyard_router.http_api.api import JsonApi
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


def test_a_model_servers_tool_field_is_named_as_each_api_spells_it() -> None:
    """The contract's ``tools[1].strict`` is OpenAI's ``tools[1].function.strict`` and
    its ``tools[0].parameters`` Anthropic's ``tools[0].input_schema``; the index stays."""
    inner = invalid_argument(
        FieldViolation("tools[1].strict", "cannot hold calls to the schema"),
        FieldViolation("tools[0].parameters", "is not JSON"),
    )
    relayed = UpstreamStatusError(inner.code, inner.message, inner.trailing_metadata())
    openai_body = json.loads(openai_error(relayed, openai.RENAMED).body)["error"]
    assert openai_body["param"] == "tools[1].function.strict"
    assert openai_body["message"] == (
        "invalid request: tools[1].function.strict: cannot hold calls to the schema; "
        "tools[0].function.parameters: is not JSON"
    )
    anthropic_body = json.loads(anthropic_error(relayed, anthropic.RENAMED).body)
    assert anthropic_body["error"]["message"] == (
        "invalid request: tools[1].strict: cannot hold calls to the schema; "
        "tools[0].input_schema: is not JSON"
    )


def test_openai_chat_becomes_the_contracts_request() -> None:
    call = openai.CHAT_COMPLETIONS.call(
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
        (
            {"model": "m", "messages": [],
             "tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools[0].function.strict",
        ),
    ],
)  # fmt: skip
def test_bad_openai_bodies_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(StatusError) as raised:
        openai.CHAT_COMPLETIONS.call(_body(body))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details.field_violations[0].field == param


def test_openai_stream_events_in_order() -> None:
    call = openai.CHAT_COMPLETIONS.call(
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
    chat = openai.CHAT_COMPLETIONS.call(_body({"model": "m", "messages": [], "stream": True}))
    assert _events(chat.closing()) == ["[DONE]"]
    messages = anthropic.MESSAGES.call(
        _body({"model": "m", "max_tokens": 5, "messages": [], "stream": True})
    )
    names = [line for line in messages.closing().decode().splitlines() if line.startswith("event")]
    assert names == [  # no content came: one empty text block, as Anthropic sends
        "event: content_block_start", "event: ping", "event: content_block_stop",
        "event: message_delta", "event: message_stop",
    ]  # fmt: skip


def test_openai_completions_logprobs_have_offsets() -> None:
    call = openai.COMPLETIONS.call(_body({"model": "m", "prompt": ["x"], "logprobs": 1}))
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
    ("finish", "finish_reason"),
    [
        (pb.FINISH_REASON_STOP, "stop"),
        (pb.FINISH_REASON_STOP_SEQUENCE, "stop"),
        (pb.FINISH_REASON_LENGTH, "length"),
        (pb.FINISH_REASON_CONTENT_FILTER, "content_filter"),
        (pb.FINISH_REASON_TOOL_CALLS, "tool_calls"),
        (pb.FINISH_REASON_CANCELLED, "cancelled"),  # neither vendor has these two
        (pb.FINISH_REASON_ERROR, "error"),
    ],
)
def test_openai_finish_reasons(finish: pb.FinishReason, finish_reason: str) -> None:
    """The README's table, for chat and completions alike."""
    for api, body in (
        (openai.CHAT_COMPLETIONS, _CHAT_BODY),
        (openai.COMPLETIONS, {"model": "m", "prompt": "x"}),
    ):
        call = api.call(_body(body))
        response = pb.GenerateResponse(text="t", finish_reason=finish)
        choice = json.loads(call.answer(response.SerializeToString()))["choices"][0]
        assert choice["finish_reason"] == finish_reason


_CHAT_BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        (pb.FINISH_REASON_STOP, "end_turn"),
        (pb.FINISH_REASON_STOP_SEQUENCE, "stop_sequence"),
        (pb.FINISH_REASON_LENGTH, "max_tokens"),
        (pb.FINISH_REASON_CONTENT_FILTER, "refusal"),
        (pb.FINISH_REASON_TOOL_CALLS, "tool_use"),
        (pb.FINISH_REASON_CANCELLED, "cancelled"),  # neither vendor has these two
        (pb.FINISH_REASON_ERROR, "error"),
    ],
)
def test_anthropic_stop_reasons(finish: pb.FinishReason, stop_reason: str) -> None:
    call = anthropic.MESSAGES.call(_body({"model": "m", "max_tokens": 5, "messages": []}))
    response = pb.GenerateResponse(text="t", finish_reason=finish)
    assert json.loads(call.answer(response.SerializeToString()))["stop_reason"] == stop_reason


def test_anthropic_system_blocks_and_content_blocks_are_joined() -> None:
    call = anthropic.MESSAGES.call(
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


# -- tools and structured output --------------------------------------------------

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_openai_tools_become_the_contracts_tools() -> None:
    call = openai.CHAT_COMPLETIONS.call(
        _body(
            {
                "model": "m",
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                ],
                "tools": [{"type": "function", "function": {
                    "name": "get_weather", "description": "d", "parameters": WEATHER_PARAMETERS,
                    "strict": True}},
                          {"type": "function", "function": {"name": "get_time", "strict": None}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "out", "schema": {"type": "object"}}},
            }
        )
    )  # fmt: skip
    request = pb.GenerateRequest.FromString(call.request)
    assert [m.role for m in request.messages] == ["user", "assistant", "tool"]
    assert request.messages[1].content == ""
    assert [(c.id, c.name, c.arguments) for c in request.messages[1].tool_calls] == [
        ("call_1", "get_weather", '{"city":"Oslo"}')
    ]
    assert request.messages[2].tool_call_id == "call_1"
    tool, plain = request.tools
    assert (tool.name, tool.description) == ("get_weather", "d")
    assert json.loads(tool.parameters) == WEATHER_PARAMETERS
    assert [tool.strict, plain.strict] == [True, False]  # null: not strict
    assert request.tool_choice.name == "get_weather"
    assert request.HasField("parallel_tool_calls") and not request.parallel_tool_calls
    assert request.response_format.json_schema.name == "out"
    assert json.loads(request.response_format.json_schema.schema) == {"type": "object"}


def test_openai_tool_calls_in_answers_and_stream_deltas() -> None:
    call = openai.CHAT_COMPLETIONS.call(_body({"model": "m", "messages": []}))
    answer = pb.GenerateResponse(
        finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        tool_calls=[pb.ToolCall(id="call_1", name="get_weather", arguments='{"city":"Oslo"}')],
    )
    choice = json.loads(call.answer(answer.SerializeToString()))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    ]  # fmt: skip
    stream = openai.CHAT_COMPLETIONS.call(_body({"model": "m", "messages": [], "stream": True}))
    first = pb.StreamGenerateResponse(
        tool_calls=[pb.ToolCallDelta(index=0, id="call_1", name="get_weather")]
    )
    more = pb.StreamGenerateResponse(tool_calls=[pb.ToolCallDelta(index=0, arguments='{"c')])
    wire = stream.message(first.SerializeToString()) + stream.message(more.SerializeToString())
    deltas = [e["choices"][0]["delta"] for e in _events(wire)]
    assert deltas == [
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"c'}}]},
    ]  # fmt: skip


def test_anthropic_tool_blocks_become_the_contracts_turns() -> None:
    call = anthropic.MESSAGES.call(
        _body(
            {
                "model": "m",
                "max_tokens": 9,
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                         "input": {"city": "Oslo"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                        {"type": "text", "text": "And tomorrow?"}]},
                ],
                "tools": [{"name": "get_weather", "input_schema": WEATHER_PARAMETERS,
                           "strict": True},
                          {"name": "get_time", "input_schema": WEATHER_PARAMETERS}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            }
        )
    )  # fmt: skip
    request = pb.GenerateRequest.FromString(call.request)
    assert [(m.role, m.content, m.tool_call_id) for m in request.messages] == [
        ("user", "Weather?", ""),
        ("assistant", "Let me look.", ""),
        ("tool", "sunny", "toolu_1"),
        ("user", "And tomorrow?", ""),
    ]
    [called] = request.messages[1].tool_calls
    assert (called.id, called.name, json.loads(called.arguments)) == (
        "toolu_1", "get_weather", {"city": "Oslo"}
    )  # fmt: skip
    assert request.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED
    assert not request.parallel_tool_calls
    assert json.loads(request.tools[0].parameters) == WEATHER_PARAMETERS
    assert [t.strict for t in request.tools] == [True, False]
    with pytest.raises(StatusError) as raised:
        anthropic.MESSAGES.call(_body({**_MESSAGE, "tools": [{"name": "f", "strict": "yes"}]}))
    assert [v.field for v in raised.value.details.field_violations] == ["tools[0].strict"]


def test_anthropic_stream_opens_a_block_per_content() -> None:
    call = anthropic.MESSAGES.call(
        _body({"model": "m", "max_tokens": 9, "messages": [], "stream": True})
    )
    text = pb.StreamGenerateResponse(text="Let me look.")
    named = pb.StreamGenerateResponse(
        tool_calls=[pb.ToolCallDelta(index=0, id="toolu_1", name="get_weather")]
    )
    argued = pb.StreamGenerateResponse(tool_calls=[pb.ToolCallDelta(index=0, arguments="{}")])
    wire = call.opening() + b"".join(
        call.message(m.SerializeToString()) for m in (text, named, argued)
    ) + call.message(_last("", pb.FINISH_REASON_TOOL_CALLS))  # fmt: skip
    events = [e for e in _events(wire) if e["type"] != "ping"]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]  # fmt: skip
    assert events[4]["content_block"] == {
        "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}
    }  # fmt: skip
    assert events[5]["delta"] == {"type": "input_json_delta", "partial_json": "{}"}
    assert events[7]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_count_tokens_is_the_contracts_count_tokens() -> None:
    call = anthropic.TOKEN_COUNT.call(
        _body({"model": "m", "system": "Be brief.", "messages": [{"role": "user", "content": "x"}]})
    )
    assert call.counts_tokens and not call.streaming
    request = pb.CountTokensRequest.FromString(call.request)
    assert [m.role for m in request.messages] == ["system", "user"]
    counted = pb.CountTokensResponse(prompt_tokens=7).SerializeToString()
    assert json.loads(call.answer(counted)) == {"input_tokens": 7}


# The README's lists (OpenAI and Anthropic APIs): what is accepted without effect, and
# what is refused by name because Switchyard cannot honour it.

_CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
_MESSAGE: dict[str, Any] = {**_CHAT, "max_tokens": 5}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "someone"),
        ("metadata", {"a": "b"}),
        ("store", True),
        ("service_tier", "auto"),
        ("prompt_cache_key", "k"),
        ("prompt_cache_retention", "24h"),
        ("prompt_cache_options", {}),
        ("safety_identifier", "s"),
        ("verbosity", "low"),
        ("stream_options", {"include_usage": True, "include_obfuscation": False}),
    ],
)
def test_openai_fields_without_effect_are_accepted_and_change_nothing(
    field: str, value: Any
) -> None:
    plain = openai.CHAT_COMPLETIONS.call(_body({**_CHAT, "stream": True}))
    with_field = openai.CHAT_COMPLETIONS.call(_body({**_CHAT, "stream": True, field: value}))
    assert with_field.request == plain.request


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("metadata", {"user_id": "someone"}),
        ("service_tier", "auto"),
        ("cache_control", {"type": "ephemeral"}),
        ("inference_geo", "us"),
        ("speed", "fast"),
        ("user_profile_id", "p"),
        ("output_config", {"effort": "low"}),
    ],
)
def test_anthropic_fields_without_effect_are_accepted_and_change_nothing(
    field: str, value: Any
) -> None:
    plain = anthropic.MESSAGES.call(_body(_MESSAGE))
    assert anthropic.MESSAGES.call(_body({**_MESSAGE, field: value})).request == plain.request


_IMAGE_PART = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
_AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
_IMAGE = {"messages": [{"role": "user", "content": [_IMAGE_PART]}]}
_AUDIO = {"messages": [{"role": "user", "content": [_AUDIO_PART]}]}
_SERVER_TOOL = {"tools": [{"type": "web_search_20250305", "name": "web_search"}]}


@pytest.mark.parametrize(
    ("api", "extra", "param"),
    [
        ("chat", {"n": 2}, "n"),
        ("chat", {"logit_bias": {"1": 5}}, "logit_bias"),
        ("chat", {"function_call": "auto"}, "function_call"),
        ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities"),
        ("chat", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ("chat", {"reasoning_effort": "low"}, "reasoning_effort"),
        ("chat", {"web_search_options": {}}, "web_search_options"),
        ("chat", _IMAGE, "messages[0].content[0]"),
        ("chat", _AUDIO, "messages[0].content[0]"),
        ("completions", {"echo": True}, "echo"),
        ("completions", {"suffix": "x"}, "suffix"),
        ("completions", {"best_of": 2}, "best_of"),
        ("messages", {"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ("messages", _SERVER_TOOL, "tools[0]"),
    ],
)  # fmt: skip
def test_what_switchyard_cannot_honour_is_refused_by_name(
    api: str, extra: dict[str, Any], param: str
) -> None:
    apis: dict[str, tuple[JsonApi[Any, Any], dict[str, Any]]] = {
        "chat": (openai.CHAT_COMPLETIONS, _CHAT),
        "completions": (openai.COMPLETIONS, {"model": "m", "prompt": "hi"}),
        "messages": (anthropic.MESSAGES, _MESSAGE),
    }
    endpoint, body = apis[api]
    with pytest.raises(StatusError) as raised:
        endpoint.call(_body({**body, **extra}))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in raised.value.details.field_violations] == [param]
