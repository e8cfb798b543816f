"""The router's HTTP front speaks the OpenAI and Anthropic APIs: the official SDKs and
curl against a live router over llama.cpp (tiny model) and scripted model servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from conftest import SCRIPTED_MODELS, start_router
from curl import curl, sse_data
from fleet import wait_healthy
from processes import ServerProcess, free_port
from toolcases import CITY_SCHEMA, WEATHER

from switchyard import Client

QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]

TYPESCRIPT = Path(__file__).resolve().parent.parent / "clients" / "typescript"


@pytest.fixture(scope="module")
def http_router(
    workdir: Path, llama_server: ServerProcess, scripted_server: ServerProcess
) -> Iterator[tuple[ServerProcess, str]]:
    """A router with its HTTP front on, over the llama and scripted model servers:
    (the router, the front's base URL)."""
    port = free_port()
    routes: list[dict[str, Any]] = [{"model": "tiny", "targets": [{"cluster": "cpu"}]}]
    routes += [
        {"model": m["id"], "targets": [{"cluster": "flaky" if m["id"] == "flaky" else "scripted"}]}
        for m in SCRIPTED_MODELS
    ]
    server = start_router(
        workdir,
        "http-router",
        {
            "http_listen": f"127.0.0.1:{port}",
            "clusters": {
                "cpu": {"endpoints": [llama_server.address]},
                "scripted": {"endpoints": [scripted_server.address]},
                # `flaky` fails every stream: its failures must not eject the others.
                "flaky": {
                    "endpoints": [scripted_server.address],
                    "outlier_detection": {"consecutive_failures": 1000},
                },
            },
            "routes": routes,
        },
    )
    wait_healthy(server)
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def oai(http_router: tuple[ServerProcess, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{http_router[1]}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def claude(http_router: tuple[ServerProcess, str]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=http_router[1], api_key="unused", max_retries=0) as client:
        yield client


CHAT: Any = [{"role": "user", "content": "Say something."}]  # the SDKs' typed params


# -- OpenAI ------------------------------------------------------------------


def test_openai_chat_over_llamacpp_answers_as_the_grpc_path_does(
    oai: openai.OpenAI, http_router: tuple[ServerProcess, str]
) -> None:
    answer = oai.chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=8,
        temperature=0,
    )
    with Client(http_router[0].address) as grpc_client:
        same = grpc_client.chat("tiny", CHAT, max_tokens=8, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.model == "tiny"
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == same.text
    assert choice.finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    assert answer.usage.prompt_tokens == same.usage.prompt_tokens
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_openai_chat_stream_is_chunks_with_usage_then_done(
    oai: openai.OpenAI, http_router: tuple[ServerProcess, str]
) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=CHAT,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    whole = oai.chat.completions.create(
        model="tiny",
        messages=CHAT,
        max_tokens=8,
        temperature=0,
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1
    # On the wire: every chunk carries "usage": null until the usage chunk, then [DONE].
    status, headers, body = curl(
        f"{http_router[1]}/v1/chat/completions",
        {"model": "canned", "messages": CHAT, "stream": True,
         "stream_options": {"include_usage": True}},
    )  # fmt: skip
    assert status == 200 and "content-type: text/event-stream" in headers
    data = sse_data(body)
    assert data[-1] == "[DONE]"
    events = [json.loads(d) for d in data[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert all(e["usage"] is None for e in events[:-1])
    assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "The capital of France is Paris."


def test_the_openai_sdks_stream_helper_assembles_the_answer(oai: openai.OpenAI) -> None:
    """``client.chat.completions.stream`` accumulates the chunks into a completion: text,
    finish reason and usage, and a tool call joined from its pieces."""
    with oai.chat.completions.stream(
        model="canned", messages=CHAT, stream_options={"include_usage": True}
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert kinds.count("content.delta") >= 1 and kinds.count("content.done") == 1
    assert final.choices[0].message.content == "The capital of France is Paris."
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.total_tokens == 8
    with oai.chat.completions.stream(
        model="caller", messages=QUESTION, tools=[WEATHER_TOOL]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_openai_stream_without_include_usage_has_no_usage_chunk(
    http_router: tuple[ServerProcess, str],
) -> None:
    _, _, body = curl(
        f"{http_router[1]}/v1/chat/completions",
        {"model": "canned", "messages": CHAT, "stream": True},
    )
    events = [json.loads(d) for d in sse_data(body)[:-1]]
    assert all("usage" not in e for e in events)
    assert events[-1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip


def test_openai_completions_with_a_stop_sequence(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(model="echo", prompt="alpha beta gamma delta", stop=" gamma")
    assert answer.object == "text_completion"
    assert answer.choices[0].text == "alpha beta"
    assert answer.choices[0].finish_reason == "stop"
    streamed = oai.completions.create(
        model="echo", prompt="alpha beta gamma delta", max_tokens=3, stream=True
    )
    pieces = list(streamed)
    assert "".join(p.choices[0].text for p in pieces) == "alpha beta gamma"
    assert pieces[-1].choices[0].finish_reason == "length"


def test_a_field_the_backend_lacks_is_400_named_as_the_api_names_it(oai: openai.OpenAI) -> None:
    """llama.cpp serves no logprobs: the model server's INVALID_ARGUMENT names
    ``sampling.logprobs``, which is ``top_logprobs`` in this API."""
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(
            model="tiny",
            messages=CHAT,
            logprobs=True,
            top_logprobs=2,
        )
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["param"] == "top_logprobs"
    assert raised.value.body["message"].startswith("invalid request: top_logprobs: not supported")


def test_openai_models_lists_the_routes(oai: openai.OpenAI) -> None:
    ids = [model.id for model in oai.models.list()]
    assert ids == sorted(["tiny", *(m["id"] for m in SCRIPTED_MODELS)])
    assert oai.models.retrieve("canned").owned_by == "switchyard"
    with pytest.raises(openai.NotFoundError, match="model 'nope' not found"):
        oai.models.retrieve("nope")


# -- Anthropic ---------------------------------------------------------------


def test_anthropic_messages_answer_with_usage_and_stop_sequence(
    claude: anthropic.Anthropic,
) -> None:
    message = claude.messages.create(
        model="echo",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "alpha beta gamma delta"}],
        stop_sequences=[" gamma"],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Be brief.\nalpha beta"  # echo: system, then user
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == " gamma"
    assert message.usage.output_tokens > 0
    assert message.usage.input_tokens > 0
    limited = claude.messages.create(model="tiny", max_tokens=3, messages=CHAT)
    assert limited.stop_reason == "max_tokens" and limited.usage.output_tokens == 3


def test_anthropic_stream_is_the_vendor_event_sequence(
    claude: anthropic.Anthropic, http_router: tuple[ServerProcess, str]
) -> None:
    with claude.messages.stream(model="canned", max_tokens=50, messages=CHAT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The capital of France is Paris."
    block = final.content[0]
    assert block.type == "text" and block.text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == 2
    status, headers, body = curl(
        f"{http_router[1]}/v1/messages",
        {"model": "canned", "max_tokens": 50, "messages": CHAT, "stream": True},
    )
    assert status == 200 and "content-type: text/event-stream" in headers
    names = [line[len("event: ") :] for line in body.splitlines() if line.startswith("event: ")]
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    assert names == [
        "message_start", "content_block_start", "ping", *["content_block_delta"] * deltas,
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    events = [json.loads(d) for d in sse_data(body)]
    assert [e["type"] for e in events] == names


def test_http2_by_prior_knowledge_serves_the_same_api(
    http_router: tuple[ServerProcess, str],
) -> None:
    """HTTP/2 without TLS (prior knowledge), as the README promises beside HTTP/1.1."""
    body = {"model": "canned", "messages": CHAT, "stream": True}
    status, headers, text = curl(f"{http_router[1]}/v1/chat/completions", body, http2=True)
    assert status == 200 and headers.startswith("http/2 200")
    assert sse_data(text)[-1] == "[DONE]"
    status, headers, _ = curl(f"{http_router[1]}/readyz", http2=True)
    assert status == 200 and headers.startswith("http/2 ")


def test_anthropic_models_list_is_its_paged_shape(claude: anthropic.Anthropic) -> None:
    page = claude.models.list()
    assert [m.id for m in page.data] == sorted(["tiny", *(m["id"] for m in SCRIPTED_MODELS)])
    assert page.data[0].type == "model"


# -- Errors ------------------------------------------------------------------


def test_bad_json_and_unknown_fields_are_400_naming_them(
    http_router: tuple[ServerProcess, str],
) -> None:
    url = http_router[1]
    status, _, body = curl(f"{url}/v1/chat/completions", "{not json")
    error = json.loads(body)["error"]
    assert status == 400 and error["param"] == "body"
    assert error["message"].startswith("invalid request: body: is not valid JSON")
    # Refused at the edge, before the router's own path, it is still counted and logged.
    assert "request method=Generate model=unknown code=INVALID_ARGUMENT" in http_router[0].log()
    unknown = {"model": "canned", "messages": CHAT, "temprature": 0.5}
    status, _, body = curl(f"{url}/v1/chat/completions", unknown)
    error = json.loads(body)["error"]
    assert status == 400
    assert error["param"] == "temprature" and error["type"] == "invalid_request_error"
    assert "temprature" in error["message"]
    nested = {"model": "canned", "messages": [{"role": "user", "content": "x", "colour": 1}]}
    status, _, body = curl(f"{url}/v1/chat/completions", nested)
    assert status == 400 and json.loads(body)["error"]["param"] == "messages[0].colour"
    status, _, body = curl(f"{url}/v1/messages", {"model": "canned", "messages": CHAT})
    assert status == 400
    assert json.loads(body) == {
        "type": "error",
        "error": {"type": "invalid_request_error",
                  "message": "invalid request: max_tokens: is required"},
    }  # fmt: skip


def test_the_model_servers_invalid_argument_names_the_api_field(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model="canned", messages=CHAT, temperature=-1)
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "temperature" and "sampling" not in error["message"]


def test_unknown_model_is_404_listing_the_routes(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        oai.chat.completions.create(model="nope", messages=CHAT)
    assert re.search(r"available models: .*\bcanned\b", str(raised.value))
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as refused:
        claude.messages.create(model="nope", max_tokens=5, messages=CHAT)
    routes = ", ".join(sorted(["tiny", *(m["id"] for m in SCRIPTED_MODELS)]))
    assert refused.value.body == {
        "type": "error",
        "error": {"type": "not_found_error",
                  "message": f"model 'nope' not found; available models: {routes}"},
    }  # fmt: skip


def test_features_switchyard_lacks_are_refused_by_name(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n: must be 1"):
        oai.chat.completions.create(model="canned", messages=CHAT, n=2)
    with pytest.raises(openai.BadRequestError, match="content parts of type 'image_url'"):
        image: Any = {"type": "image_url", "image_url": {"url": "x"}}
        oai.chat.completions.create(
            model="canned",
            messages=[{"role": "user", "content": [image]}],
        )


def test_a_stream_that_fails_before_its_first_message_is_an_http_error(
    http_router: tuple[ServerProcess, str],
) -> None:
    status, headers, body = curl(
        f"{http_router[1]}/v1/chat/completions",
        {"model": "nope", "messages": CHAT, "stream": True},
    )
    assert status == 404 and "content-type: application/json" in headers
    assert json.loads(body)["error"]["type"] == "not_found_error"


def test_a_stream_that_fails_midway_ends_with_an_error_event(
    http_router: tuple[ServerProcess, str],
) -> None:
    """``flaky`` fails after 2 tokens; its route does not resume."""
    status, _, body = curl(
        f"{http_router[1]}/v1/chat/completions",
        {"model": "flaky", "messages": CHAT, "stream": True},
    )
    assert status == 200
    data = sse_data(body)
    error = json.loads(data[-1])["error"]
    assert error["type"] == "service_unavailable_error"
    assert "after 2 streamed messages" in error["message"]
    _, _, body = curl(
        f"{http_router[1]}/v1/messages",
        {"model": "flaky", "max_tokens": 9, "messages": CHAT, "stream": True},
    )
    assert body.rstrip().splitlines()[-2] == "event: error"
    assert json.loads(sse_data(body)[-1])["error"]["type"] == "overloaded_error"


def test_a_stream_failing_midway_raises_in_the_sdks(
    oai: openai.OpenAI, claude: anthropic.Anthropic
) -> None:
    with pytest.raises(openai.APIError, match="after 2 streamed messages"):
        for _ in oai.chat.completions.create(model="flaky", messages=CHAT, stream=True):
            pass
    refused = pytest.raises(anthropic.APIStatusError, match="after 2 streamed messages")
    with refused, claude.messages.stream(model="flaky", max_tokens=9, messages=CHAT) as stream:
        for _ in stream.text_stream:
            pass


def test_health_endpoints_answer_for_load_balancers(
    http_router: tuple[ServerProcess, str],
) -> None:
    assert curl(f"{http_router[1]}/healthz")[0] == 200
    status, _, body = curl(f"{http_router[1]}/readyz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, headers, _ = curl(f"{http_router[1]}/v1/chat/completions")
    assert status == 405 and "allow: post" in headers
    assert curl(f"{http_router[1]}/v2/nothing")[0] == 404


# -- TypeScript ----------------------------------------------------------------


def _openai_typescript(base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """clients/typescript/src/openai-example.ts: the official `openai` npm package."""
    return subprocess.run(
        [str(TYPESCRIPT / "node_modules" / ".bin" / "tsx"), "src/openai-example.ts",
         "--base-url", f"{base_url}/v1", *args],
        cwd=TYPESCRIPT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip


def test_the_openai_npm_package_lists_chats_and_streams(
    http_router: tuple[ServerProcess, str],
) -> None:
    ran = _openai_typescript(http_router[1], "--model", "tiny", "--max-tokens", "8")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert {f"model {m['id']}" for m in SCRIPTED_MODELS} | {"model tiny"} <= set(lines)
    with Client(http_router[0].address) as client:
        expected = client.chat(
            "tiny",
            [{"role": "user", "content": "Which city is the capital of France?"}],
            max_tokens=8,
            temperature=0,
        ).text
    [chat] = [line for line in lines if line.startswith("chat ")]
    [stream] = [line for line in lines if line.startswith("stream ")]
    assert chat == f"chat {json.dumps(expected, ensure_ascii=False)} finish=length tokens=8"
    assert stream.startswith(f"stream {json.dumps(expected, ensure_ascii=False)} chunks=")
    assert stream.endswith(" finish=length tokens=8")


def test_the_openai_npm_package_sees_the_vendor_error(
    http_router: tuple[ServerProcess, str],
) -> None:
    ran = _openai_typescript(http_router[1], "--model", "no-such-model")
    assert ran.returncode == 1
    assert ran.stderr.startswith("error: 404 not_found_error: ")
    assert re.search(r"available models: .*\bcanned\b", ran.stderr)


# -- Tools and structured output -----------------------------------------------

# One call, as a random model under constrained decoding would otherwise go on calling.
ONE_CALL: Any = {"type": "any", "disable_parallel_tool_use": True}
GREEDY = {"temperature": 0}  # the Anthropic SDK has no parameter for it; the API has
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": WEATHER.name,
        "description": WEATHER.description,
        "parameters": WEATHER.parameters,
    },
}


def test_openai_tools_over_llamacpp_call_with_arguments_that_match_the_schema(
    oai: openai.OpenAI,
) -> None:
    answer = oai.chat.completions.create(
        model="tiny", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
        parallel_tool_calls=False, max_tokens=150, temperature=0,
    )  # fmt: skip
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls and all(c.type == "function" and c.id for c in calls)
    for call in calls:
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.function.arguments), WEATHER.parameters)  # type: ignore[union-attr]
    # The streamed call, joined by index, is the same call.
    chunks = list(
        oai.chat.completions.create(
            model="tiny", messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
            parallel_tool_calls=False, max_tokens=150, temperature=0, stream=True,
        )
    )  # fmt: skip
    joined: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = joined.setdefault(piece.index, {"name": "", "arguments": ""})
            if piece.function and piece.function.name:
                entry["name"] = piece.function.name
            if piece.function and piece.function.arguments:
                entry["arguments"] += piece.function.arguments
    assert [(e["name"], e["arguments"]) for _, e in sorted(joined.items())] == [
        (c.function.name, c.function.arguments)  # type: ignore[union-attr]
        for c in calls
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_openai_tool_results_go_back_and_the_model_answers(oai: openai.OpenAI) -> None:
    """The scripted `caller` calls get_weather, then answers once it has the result."""
    first = oai.chat.completions.create(model="caller", messages=QUESTION, tools=[WEATHER_TOOL])
    [call] = first.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}  # type: ignore[union-attr]
    conversation: Any = [
        *QUESTION,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    final = oai.chat.completions.create(model="caller", messages=conversation, tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "It is sunny in Paris."


def test_openai_json_schema_output_matches_the_schema(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=150, temperature=0,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
    )  # fmt: skip
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), CITY_SCHEMA)


def test_anthropic_tools_are_tool_use_blocks_unary_and_streamed(
    claude: anthropic.Anthropic,
) -> None:
    tool: Any = {
        "name": WEATHER.name,
        "description": WEATHER.description,
        "input_schema": WEATHER.parameters,
    }
    message = claude.messages.create(
        model="tiny", max_tokens=150, messages=QUESTION, tools=[tool],
        tool_choice=ONE_CALL, extra_body=GREEDY,
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses
    for use in uses:
        assert use.name == "get_weather" and use.id
        jsonschema.validate(use.input, WEATHER.parameters)
    with claude.messages.stream(
        model="tiny", max_tokens=150, messages=QUESTION, tools=[tool],
        tool_choice=ONE_CALL, extra_body=GREEDY,
    ) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [
        (u.name, u.input) for u in uses
    ]
    # The tool's result goes back as a tool_result block; the scripted caller answers.
    called = claude.messages.create(model="caller", max_tokens=50, messages=QUESTION, tools=[tool])
    [use] = [block for block in called.content if block.type == "tool_use"]
    assert use.input == {"city": "Paris", "unit": "celsius"}
    answered = claude.messages.create(
        model="caller", max_tokens=50, tools=[tool],
        messages=[*QUESTION, {"role": "assistant", "content": called.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "sunny"}]}],
    )  # fmt: skip
    assert answered.stop_reason == "end_turn"
    assert answered.content[0].type == "text"
    assert answered.content[0].text == "It is sunny in Paris."


def test_anthropic_count_tokens_is_the_prompt_tokens_of_the_same_request(
    claude: anthropic.Anthropic,
) -> None:
    tool: Any = {"name": WEATHER.name, "input_schema": WEATHER.parameters}
    counted = claude.messages.count_tokens(model="tiny", messages=QUESTION, tools=[tool])
    answer = claude.messages.create(model="tiny", max_tokens=1, messages=QUESTION, tools=[tool])
    assert counted.input_tokens == answer.usage.input_tokens > 0


def test_anthropic_structured_output_matches_the_schema(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="tiny", max_tokens=150, messages=QUESTION, extra_body=GREEDY,
        output_config={"format": {"type": "json_schema", "schema": CITY_SCHEMA}},
    )  # fmt: skip
    block = message.content[0]
    assert block.type == "text"
    jsonschema.validate(json.loads(block.text), CITY_SCHEMA)
