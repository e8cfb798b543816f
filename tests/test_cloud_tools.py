"""Tools, structured output and CountTokens on the cloud backends, through the router:
the official SDKs against the local server that speaks each vendor's wire format
(tests/vendors.py). Each test checks both directions: what reached the vendor, in
its own shape, and what came back, in ours."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from conftest import start_modelserver, start_router
from fleet import wait_healthy
from processes import ServerProcess, free_port, wait_until
from toolcases import (
    CITY_SCHEMA,
    QUESTION,
    TIME,
    TOOLS,
    WEATHER,
    check_calls,
    same_answer,
    tool_round,
)
from vendors import FakeVendors, backend_config, new_request_id

from switchyard import (
    Client,
    FinishReason,
    Grammar,
    InvalidArgumentError,
    JsonSchema,
    Tool,
    UnimplementedError,
)
from switchyard._convert import MessageLike

KINDS = ("openai", "anthropic", "ollama")
STRICT_WEATHER = dataclasses.replace(WEATHER, strict=True)


def asking(request_id: str) -> list[MessageLike]:
    """The weather question, carrying ``request_id`` so that the vendor's record of
    this very request can be found (``FakeVendors.received``)."""
    return [{"role": "user", "content": f"What is the weather in Paris? ({request_id})"}]


@pytest.fixture(scope="module")
def http_port() -> int:
    """The port of the router's HTTP front (OpenAI and Anthropic APIs)."""
    return free_port()


@pytest.fixture(scope="module")
def router(
    workdir: Path,
    vendors: FakeVendors,
    key_file: Path,
    http_port: int,
) -> Iterator[ServerProcess]:
    """One model server per vendor, and a router with a route ``<kind>`` to each's "ok"
    and one over OpenAI's and Ollama's (its HTTP front on ``http_port``)."""
    servers = {
        kind: start_modelserver(
            workdir,
            f"tools-{kind}",
            backend_config(
                kind,
                vendors.url,
                key_file,
                startup_check=False,
                # The fake speaks for OpenAI itself, which holds strict tools.
                **({"strict_tools": True} if kind == "openai" else {}),
            ),
        )
        for kind in KINDS
    }
    router = start_router(
        workdir,
        "tools-cloud-router",
        {
            "http_listen": f"127.0.0.1:{http_port}",
            "clusters": {kind: {"endpoints": [s.address]} for kind, s in servers.items()},
            "routes": [
                *({"model": kind, "targets": [{"cluster": kind, "model": "ok"}]} for kind in KINDS),
                # OpenAI (or Anthropic) first, Ollama its fallback.
                *(
                    {
                        "model": f"{first}-then-ollama",
                        "targets": [
                            {"cluster": first, "model": "ok"},
                            {"cluster": "ollama", "model": "ok", "priority": 1},
                        ],
                    }
                    for first in ("openai", "anthropic")
                ),
                # An even split over both: what a request needs decides where it may go.
                {
                    "model": "openai-and-ollama",
                    "targets": [
                        {"cluster": "openai", "model": "ok", "weight": 1},
                        {"cluster": "ollama", "model": "ok", "weight": 1},
                    ],
                },
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


@pytest.fixture
def http_base(router: ServerProcess, http_port: int) -> str:
    """The router's HTTP front, once every model server is healthy there."""
    wait_healthy(router)
    return f"http://127.0.0.1:{http_port}"


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


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_strict_tool_reaches_the_vendor_strict_and_a_plain_one_does_not(
    kind: str,
    client: Client,
    vendors: FakeVendors,
) -> None:
    request_id = new_request_id()
    answer = client.chat(
        kind, asking(request_id), tools=[STRICT_WEATHER, TIME], tool_choice="get_weather"
    )
    check_calls(answer.tool_calls)
    sent = vendors.received(request_id).body["tools"]
    if kind == "openai":
        assert sent[0]["function"]["strict"] is True
        assert "strict" not in sent[1]["function"]
        return
    assert sent[0]["strict"] is True
    assert "strict" not in sent[1]
    # The count-tokens call sends the same tool definitions.
    count_id = new_request_id()
    client.count_tokens(kind, messages=asking(count_id), tools=[STRICT_WEATHER, TIME])
    counted = vendors.received(count_id)
    assert counted.path == "/v1/messages/count_tokens"
    assert [t.get("strict") for t in counted.body["tools"]] == [True, None]


def test_openai_refusing_a_strict_schema_is_invalid_argument_with_its_message(
    client: Client,
) -> None:
    """OpenAI's strict mode takes only closed object schemas with every property
    required; its 400 for any other reaches the caller with OpenAI's own words."""
    loose = {"type": "object", "properties": {"city": {"type": "string"}}}
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("openai", QUESTION, tools=[Tool("lookup", "Look up", loose, strict=True)])
    assert "Invalid schema for function 'lookup'" in str(error.value)
    assert error.value.reason == "PROVIDER_REJECTED_REQUEST"
    answer = client.chat("openai", QUESTION, tools=[Tool("lookup", "Look up", loose)])
    assert [c.name for c in answer.tool_calls] == ["lookup"]


def test_ollama_refuses_a_strict_tool_naming_it_and_takes_it_plain(client: Client) -> None:
    """Ollama cannot hold calls to a schema: a strict tool is refused, never sent as a
    plain one."""
    for call in (
        lambda: client.chat("ollama", QUESTION, tools=[STRICT_WEATHER]),
        lambda: list(client.stream("ollama", messages=QUESTION, tools=[STRICT_WEATHER])),
    ):
        with pytest.raises(InvalidArgumentError) as error:
            call()
        assert [v.field for v in error.value.field_violations] == ["tools[0].strict"]
    answer = client.chat("ollama", QUESTION, tools=[WEATHER])
    assert answer.finish_reason is FinishReason.TOOL_CALLS
    # ListModels says which models hold strict tools, so callers can tell beforehand.
    strict = {m.id: "strict_tools" in m.capabilities for m in client.list_models()}
    assert (strict["openai"], strict["anthropic"], strict["ollama"]) == (True, True, False)


def test_a_route_lists_what_routing_by_capability_can_serve_and_counts_only_where_all_can(
    router: ServerProcess, client: Client
) -> None:
    """A route over OpenAI and an Ollama fallback lists strict tools (Ollama lacks them,
    but a request with one goes to OpenAI), and serves one; a route over Anthropic and
    Ollama does not list CountTokens, which only Anthropic has (a count is not routed
    by capability: it may land on Ollama)."""
    wait_healthy(router)  # every replica describes the model
    models = {m.id: m for m in client.list_models()}
    assert models["openai-then-ollama"].healthy_replicas == 2
    capabilities = {name: set(m.capabilities) for name, m in models.items()}
    assert {"tools", "strict_tools"} <= capabilities["openai"]
    assert "strict_tools" not in capabilities["ollama"]
    assert capabilities["openai-then-ollama"] == capabilities["openai"] | capabilities["ollama"]
    answer = client.chat("openai-then-ollama", QUESTION, tools=[STRICT_WEATHER])
    assert [c.name for c in answer.tool_calls] == [STRICT_WEATHER.name]
    assert "count_tokens" in capabilities["anthropic"]
    assert "count_tokens" not in capabilities["ollama"]
    assert "strict_tools" in capabilities["anthropic-then-ollama"]
    assert "count_tokens" not in capabilities["anthropic-then-ollama"]


def test_an_openai_compatible_server_refuses_strict_tools_unless_told_it_holds_them(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> None:
    """Behind a base_url that is not OpenAI's own (vLLM, a proxy: they may take
    function.strict and ignore it), a strict tool is refused rather than passed on
    unenforced, and ListModels says so; ``strict_tools: true`` says the server holds
    them."""
    compatible = start_modelserver(
        workdir,
        "tools-openai-compatible",
        backend_config("openai", vendors.url, key_file, startup_check=False),
    )
    try:
        with Client(compatible.address, timeout=30) as direct:
            strict = {m.id: "strict_tools" in m.capabilities for m in direct.list_models()}
            assert strict["ok"] is False
            with pytest.raises(InvalidArgumentError) as error:
                direct.chat("ok", QUESTION, tools=[STRICT_WEATHER])
            assert [v.field for v in error.value.field_violations] == ["tools[0].strict"]
            assert direct.chat("ok", QUESTION, tools=[WEATHER]).tool_calls
    finally:
        compatible.stop()


def _strict_and_plain() -> tuple[Any, Any]:
    """The weather question with a strict weather tool and a plain time tool, in
    OpenAI's and in Anthropic's shape."""
    tools = [(STRICT_WEATHER, True), (TIME, None)]
    openai_tools = [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
            | ({"strict": True} if strict else {}),
        }
        for t, strict in tools
    ]
    anthropic_tools = [
        {"name": t.name, "description": t.description, "input_schema": t.parameters}
        | ({"strict": True} if strict else {})
        for t, strict in tools
    ]
    return openai_tools, anthropic_tools


def test_the_openai_sdks_strict_tool_arrives_strict_through_the_http_front(
    http_base: str, vendors: FakeVendors
) -> None:
    """The whole path: OpenAI's SDK, the router's HTTP front, the model server's openai
    backend, the vendor."""
    request_id = new_request_id()
    question: Any = asking(request_id)  # the SDK's typed params
    tools, _ = _strict_and_plain()
    with openai.OpenAI(base_url=f"{http_base}/v1", api_key="unused", max_retries=0) as oai:
        answer = oai.chat.completions.create(
            model="openai", messages=question, tools=tools, tool_choice="required"
        )
    assert answer.choices[0].finish_reason == "tool_calls"
    sent = vendors.received(request_id).body["tools"]
    assert [t["function"].get("strict") for t in sent] == [True, None]


def test_the_anthropic_sdks_strict_tool_arrives_strict_through_the_http_front(
    http_base: str, vendors: FakeVendors
) -> None:
    """The whole path: Anthropic's SDK, the router's HTTP front, the model server's
    anthropic backend, the vendor."""
    request_id = new_request_id()
    question: Any = asking(request_id)  # the SDK's typed params
    _, tools = _strict_and_plain()
    with anthropic.Anthropic(base_url=http_base, api_key="unused", max_retries=0) as claude:
        answer = claude.messages.create(
            model="anthropic", max_tokens=50, messages=question, tools=tools
        )
    assert answer.stop_reason == "tool_use"
    sent = vendors.received(request_id).body["tools"]
    assert [t.get("strict") for t in sent] == [True, None]


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


def test_strict_tools_on_an_even_split_all_land_on_openai(
    router: ServerProcess, client: Client, vendors: FakeVendors
) -> None:
    """Ollama cannot hold calls to a schema: on a 1:1 split with OpenAI, the router
    sends every strict-tool request to OpenAI, and plain chats still to both."""
    wait_healthy(router)
    wait_until(
        lambda: router.log().count("capabilities:") >= len(KINDS),
        "every endpoint's capabilities read",
    )
    for _ in range(20):
        answer = client.chat("openai-and-ollama", asking(sent := new_request_id()),
                             tools=[STRICT_WEATHER])  # fmt: skip
        assert answer.finish_reason is FinishReason.TOOL_CALLS
        assert vendors.received(sent).path.endswith("/chat/completions")
    paths = set()
    for _ in range(20):
        client.chat("openai-and-ollama", asking(sent := new_request_id()))
        paths.add(vendors.received(sent).path)
    assert len(paths) == 2, paths  # OpenAI's and Ollama's APIs both (P(not) = 2^-19)
