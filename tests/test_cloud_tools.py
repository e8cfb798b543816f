"""Tools, structured output and CountTokens on the cloud backends, through the router:
the official SDKs against the local server that speaks each vendor's wire format
(tests/vendors.py). Each test checks both directions: what reached the vendor, in
its own shape, and what came back, in ours."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import start_modelserver, start_router
from processes import ServerProcess
from toolcases import CITY_SCHEMA, QUESTION, TOOLS, WEATHER, check_calls, same_answer, tool_round
from vendors import FakeVendors, backend_config, new_request_id

from switchyard import (
    Client,
    FinishReason,
    Grammar,
    InvalidArgumentError,
    JsonSchema,
    UnimplementedError,
)
from switchyard._convert import MessageLike

KINDS = ("openai", "anthropic", "ollama")


def asking(request_id: str) -> list[MessageLike]:
    """The weather question, carrying ``request_id`` so that the vendor's record of
    this very request can be found (``FakeVendors.received``)."""
    return [{"role": "user", "content": f"What is the weather in Paris? ({request_id})"}]


@pytest.fixture(scope="module")
def router(
    workdir: Path,
    vendors: FakeVendors,
    key_file: Path,
) -> Iterator[ServerProcess]:
    """One model server per vendor, and a router with a route ``<kind>`` to each's "ok"."""
    servers = {
        kind: start_modelserver(
            workdir,
            f"tools-{kind}",
            backend_config(kind, vendors.url, key_file, startup_check=False),
        )
        for kind in KINDS
    }
    router = start_router(
        workdir,
        "tools-cloud-router",
        {
            "clusters": {kind: {"endpoints": [s.address]} for kind, s in servers.items()},
            "routes": [
                {"model": kind, "targets": [{"cluster": kind, "model": "ok"}]} for kind in KINDS
            ],
        },
    )
    yield router
    router.stop()
    for server in servers.values():
        server.stop()


@pytest.fixture
def client(router: ServerProcess) -> Iterator[Client]:
    with Client(router.address, timeout=30) as c:
        yield c


@pytest.mark.parametrize("kind", KINDS)
def test_a_tool_call_round_trip_on_each_vendor(
    kind: str,
    client: Client,
    vendors: FakeVendors,
) -> None:
    question = asking(first := new_request_id())
    answer = client.chat(kind, question, tools=TOOLS)
    assert answer.finish_reason is FinishReason.TOOL_CALLS
    (call,) = check_calls(answer.tool_calls)
    assert (call.name, call.parsed_arguments()) == (
        "get_weather",
        {"city": "Paris", "unit": "celsius"},
    )
    sent = vendors.received(first).body
    if kind == "anthropic":
        assert sent["tools"][0]["input_schema"] == WEATHER.parameters
        assert sent["tool_choice"] == {"type": "auto"}
    else:
        assert sent["tools"][0]["function"]["parameters"] == WEATHER.parameters
    result = {"sky": "sunny", "request": (second := new_request_id())}
    final = client.chat(kind, [*question, *tool_round(answer, result)], tools=TOOLS)
    assert final.finish_reason is FinishReason.STOP
    assert final.text == f"Hello from {kind}: {json.dumps(result)}"
    back = vendors.received(second).body["messages"]
    if kind == "openai":
        assert back[-2]["tool_calls"][0]["id"] == call.id
        assert back[-1] == {"role": "tool", "content": json.dumps(result), "tool_call_id": call.id}
    elif kind == "anthropic":
        assert back[-2]["content"][0] == {
            "type": "tool_use",
            "id": call.id,
            "name": "get_weather",
            "input": {"city": "Paris", "unit": "celsius"},
        }
        assert back[-1]["content"] == [
            {"type": "tool_result", "tool_use_id": call.id, "content": json.dumps(result)}
        ]
    else:
        assert back[-2]["tool_calls"][0]["function"]["arguments"] == {
            "city": "Paris",
            "unit": "celsius",
        }
        assert back[-1]["tool_name"] == "get_weather"


@pytest.mark.parametrize("kind", KINDS)
def test_a_streamed_cloud_tool_call_equals_the_unary_one(kind: str, client: Client) -> None:
    unary = client.chat(kind, QUESTION, tools=TOOLS)
    same_answer(unary, client.stream(kind, messages=QUESTION, tools=TOOLS))


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_required_parallel_calls_keep_their_indexes(
    kind: str,
    client: Client,
    vendors: FakeVendors,
) -> None:
    answer = client.chat(kind, QUESTION, tools=TOOLS, tool_choice="required")
    assert [c.name for c in check_calls(answer.tool_calls)] == ["get_weather", "get_time"]
    same_answer(answer, client.stream(kind, messages=QUESTION, tools=TOOLS, tool_choice="required"))
    request_id = new_request_id()
    one = client.chat(
        kind, asking(request_id), tools=TOOLS, tool_choice="get_time", parallel_tool_calls=False
    )
    assert [c.name for c in one.tool_calls] == ["get_time"]
    sent = vendors.received(request_id).body
    if kind == "openai":
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
        assert sent["parallel_tool_calls"] is False
    else:
        assert sent["tool_choice"] == {
            "type": "tool",
            "name": "get_time",
            "disable_parallel_tool_use": True,
        }


def test_ollama_refuses_what_its_api_cannot_do_and_tool_choice_none_sends_no_tools(
    client: Client,
    vendors: FakeVendors,
) -> None:
    for options in ({"tool_choice": "required"}, {"parallel_tool_calls": False}):
        with pytest.raises(InvalidArgumentError) as error:
            client.chat("ollama", QUESTION, tools=TOOLS, **options)
        assert [v.field for v in error.value.field_violations] == [next(iter(options))]
    request_id = new_request_id()
    answer = client.chat("ollama", asking(request_id), tools=TOOLS, tool_choice="none")
    assert answer.finish_reason is FinishReason.STOP and not answer.tool_calls
    assert "tools" not in vendors.received(request_id).body


@pytest.mark.parametrize("kind", KINDS)
def test_a_json_schema_reaches_each_vendor_natively_and_the_answer_matches(
    kind: str,
    client: Client,
    vendors: FakeVendors,
) -> None:
    request_id = new_request_id()
    answer = client.chat(kind, asking(request_id), response_format=JsonSchema(CITY_SCHEMA, "city"))
    jsonschema.validate(answer.json(), CITY_SCHEMA)
    sent = vendors.received(request_id).body
    if kind == "openai":
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        }
    elif kind == "anthropic":
        assert sent["output_config"] == {"format": {"type": "json_schema", "schema": CITY_SCHEMA}}
    else:
        assert sent["format"] == CITY_SCHEMA
    assert isinstance(client.chat(kind, QUESTION, response_format="json_object").json(), dict)


@pytest.mark.parametrize("kind", KINDS)
def test_grammars_are_refused_where_the_vendor_has_none(kind: str, client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.chat(kind, QUESTION, response_format=Grammar('root ::= "yes"'))
    assert [v.field for v in error.value.field_violations] == ["response_format.grammar"]


def test_anthropic_counts_tokens_with_its_api_as_a_generation_would(
    client: Client,
    vendors: FakeVendors,
) -> None:
    request_id = new_request_id()
    counted = client.count_tokens("anthropic", messages=asking(request_id), tools=TOOLS)
    sent = vendors.received(request_id).body
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    answer = client.chat("anthropic", asking(new_request_id()), tools=TOOLS, tool_choice="none")
    assert counted.prompt_tokens == answer.usage.prompt_tokens > 0
    assert counted.backend == "anthropic"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_vendors_without_a_count_api_are_unimplemented_with_the_reason(
    kind: str, client: Client
) -> None:
    with pytest.raises(UnimplementedError) as error:
        client.count_tokens(kind, messages=QUESTION)
    assert error.value.reason == "TOKEN_COUNT_UNSUPPORTED"
    assert "exactly" in str(error.value)


def test_the_openai_completions_api_takes_no_response_format(
    workdir: Path,
    vendors: FakeVendors,
    key_file: Path,
) -> None:
    server = start_modelserver(
        workdir, "tools-openai-text", backend_config("openai", vendors.url, key_file)
    )
    try:
        with (
            Client(server.address, timeout=30) as direct,
            pytest.raises(InvalidArgumentError) as error,
        ):
            direct.generate("ok-text", "hi", response_format="json_object")
    finally:
        server.stop()
    assert "response_format" in [v.field for v in error.value.field_violations]
