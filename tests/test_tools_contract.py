"""Tools, response formats, CountTokens and per-model defaults as the contract states them,
on the scripted backend (deterministic) and through the router: the checks every
backend shares, the round trip, streams, and the defaults an operator configures."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fleet import Fleet, wait_healthy
from processes import ServerProcess
from toolcases import QUESTION, TOOLS, WEATHER, check_calls, same_answer, tool_round

from switchyard import (
    Client,
    FinishReason,
    InvalidArgumentError,
    JsonSchema,
    Message,
    NotFoundError,
    ToolCall,
    UnavailableError,
)
from switchyard._convert import MessageLike
from switchyard.v1 import llm_service_pb2 as pb

SCRIPTED: list[dict[str, Any]] = [
    {
        "id": "caller",
        "reply": "It is sunny.",
        "tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
    },
    {"id": "echo"},
]
DEFAULTS = {
    "echo": {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 3,
        "stop": ["STOP"],
        "system_prompt": "Be brief.",
    }
}


@pytest.fixture(scope="module")
def stack(workdir: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """A scripted model server (with model defaults) and a router in front of it."""
    fleet = Fleet(workdir, "tools-contract")
    server = fleet.scripted("scripted", SCRIPTED, model_defaults=DEFAULTS)
    router = fleet.router(
        {
            "clusters": {"scripted": {"endpoints": [server.address]}},
            "routes": [{"model": m["id"], "targets": [{"cluster": "scripted"}]} for m in SCRIPTED],
        }
    )
    yield server, router
    fleet.stop()


@pytest.fixture(params=["router", "direct"])
def client(
    request: pytest.FixtureRequest, stack: tuple[ServerProcess, ServerProcess]
) -> Iterator[Client]:
    server, router = stack
    with Client((router if request.param == "router" else server).address, timeout=30) as c:
        yield c


def _violations(error: pytest.ExceptionInfo[InvalidArgumentError]) -> dict[str, str]:
    return {v.field: v.description for v in error.value.field_violations}


def test_a_tool_call_round_trip(client: Client) -> None:
    answer = client.chat("caller", QUESTION, tools=TOOLS)
    assert answer.finish_reason is FinishReason.TOOL_CALLS
    (call,) = check_calls(answer.tool_calls)
    assert call.parsed_arguments() == {"city": "Paris", "unit": "celsius"}
    final = client.chat("caller", [*QUESTION, *tool_round(answer, {"sky": "sunny"})], tools=TOOLS)
    assert final.finish_reason is FinishReason.STOP
    assert final.text == "It is sunny."
    assert not final.tool_calls


def test_a_streamed_tool_call_names_the_tool_first_and_equals_the_unary_call(
    client: Client,
) -> None:
    unary = client.chat("caller", QUESTION, tools=TOOLS)
    chunks = list(client.stream("caller", messages=QUESTION, tools=TOOLS))
    assert len([c for c in chunks if c.tool_calls]) >= 2  # the name goes out at once
    same_answer(unary, chunks)


def test_bad_tool_definitions_name_the_field(client: Client) -> None:
    bad = [
        {"name": "ok", "parameters": {"type": "object"}},
        {"name": "bad name!", "parameters": {}},
        {"name": "ok", "parameters": {"type": "string"}},
        {"name": "schema", "parameters": {"type": "object", "properties": {"a": {"type": 7}}}},
    ]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", QUESTION, tools=bad)
    violations = _violations(error)
    assert "tools[1].name" in violations
    assert "twice" in violations["tools[2].name"]
    assert "object" in violations["tools[2].parameters"]
    assert "not a valid JSON Schema" in violations["tools[3].parameters"]


def test_a_parameters_schema_that_is_not_json_names_the_field(
    stack: tuple[ServerProcess, ServerProcess],
) -> None:
    _, router = stack
    request = pb.GenerateRequest(
        model="caller",
        messages=[pb.ChatMessage(role="user", content="hi")],
        tools=[pb.Tool(name="f", parameters="{not json")],
    )
    error = _raw_generate(router, request)
    assert "tools[0].parameters" in error and "is not JSON" in error


def test_unknown_tool_names_name_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", QUESTION, tools=TOOLS, tool_choice="get_stock_price")
    assert "get_stock_price" in _violations(error)["tool_choice.name"]
    made = ToolCall("call_1", "send_email", "{}")
    conversation: list[MessageLike] = [*QUESTION, Message("assistant", "", tool_calls=(made,))]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", conversation, tools=TOOLS)
    assert "send_email" in _violations(error)["messages[1].tool_calls[0].name"]


def test_a_tool_message_must_answer_an_earlier_call(client: Client) -> None:
    orphan: list[MessageLike] = [*QUESTION, Message.tool_result("call_nobody_made", "42")]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", orphan, tools=TOOLS)
    assert "call_nobody_made" in _violations(error)["messages[1].tool_call_id"]
    made = ToolCall("call_1", "get_weather", '{"city": "Oslo", "unit": "celsius"}')
    twice: list[MessageLike] = [
        *QUESTION,
        Message("assistant", "", tool_calls=(made,)),
        Message.tool_result(made, "1"),
        Message.tool_result(made, "2"),
    ]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", twice, tools=TOOLS)
    assert "answered already" in _violations(error)["messages[3].tool_call_id"]
    arguments = [
        *QUESTION,
        Message("assistant", "", tool_calls=(ToolCall("c", "get_weather", "[1]"),)),
    ]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", arguments, tools=TOOLS)
    assert "messages[1].tool_calls[0].arguments" in _violations(error)


def test_a_bad_response_schema_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", QUESTION, response_format=JsonSchema({"type": "nonsense"}))
    assert "response_format.json_schema.schema" in _violations(error)


def test_what_a_backend_cannot_do_is_refused_not_ignored(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("caller", QUESTION, response_format="json_object")
    assert "does not support JSON output" in _violations(error)["response_format"]
    with pytest.raises(InvalidArgumentError) as error:
        client.chat("echo", QUESTION, tools=[WEATHER])
    assert "tool calling" in _violations(error)["tools"]


def test_count_tokens_matches_usage_and_unknown_models_are_not_found(client: Client) -> None:
    counted = client.count_tokens("caller", messages=QUESTION, tools=TOOLS)
    answer = client.chat("caller", QUESTION, tools=TOOLS)
    assert counted.prompt_tokens == answer.usage.prompt_tokens > 0
    assert (counted.model, counted.backend) == ("caller", "scripted")
    with pytest.raises(NotFoundError):
        client.count_tokens("no-such-model", "hi")


def test_model_defaults_fill_what_a_request_leaves_unset(client: Client) -> None:
    answer = client.chat("echo", [{"role": "user", "content": "one two three four five"}])
    assert answer.text == "Be brief.\none"  # the system prompt first, max_tokens 3
    assert answer.finish_reason is FinishReason.LENGTH
    own = client.chat(
        "echo",
        [{"role": "system", "content": "Mine."}, {"role": "user", "content": "a b STOP c"}],
        max_tokens=10,
    )
    assert own.text == "Mine.\na b "  # the request's own system prompt and max_tokens win
    assert own.finish_reason is FinishReason.STOP_SEQUENCE
    counted = client.count_tokens("echo", messages=[{"role": "user", "content": "one"}])
    assert counted.prompt_tokens == 3  # "Be brief." + "one"


def test_list_models_shows_the_defaults(client: Client) -> None:
    models = {m.id: m for m in client.list_models()}
    defaults = models["echo"].defaults
    assert defaults is not None
    sampling = dict(defaults.sampling)
    assert sampling.pop("stop") == ["STOP"]
    assert sampling == pytest.approx({"temperature": 0.3, "top_p": 0.9, "max_tokens": 3})
    assert defaults.system_prompt == "Be brief."
    assert not defaults.chat_template_override
    assert models["caller"].defaults is None
    assert "tools" in models["caller"].capabilities
    assert "strict_tools" in models["caller"].capabilities
    assert "count_tokens" in models["caller"].capabilities


def test_a_chat_template_on_a_backend_that_cannot_use_one_stops_the_server(
    tmp_path: Path,
) -> None:
    config = tmp_path / "modelserver.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "backend": {"kind": "scripted", "models": [{"id": "echo"}]},
                "model_defaults": {"echo": {"chat_template": "{{ messages }}"}},
            }
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "switchyard_modelserver", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "model_defaults.echo.chat_template" in result.stderr


def _raw_generate(server: ServerProcess, request: pb.GenerateRequest) -> str:
    import grpc

    from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.address) as channel:
        try:
            pb_grpc.LLMServiceStub(channel).Generate(request, timeout=10)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            return str(error.details())
    raise AssertionError("no error")


def test_a_stream_that_broke_after_a_tool_call_began_is_not_resumed(workdir: Path) -> None:
    """A continuation carries text and token ids, not tool calls: resuming would make
    the call twice or garble it, so the stream ends with a clean error instead."""
    fleet = Fleet(workdir, "tools-no-resume")
    flaky = {**SCRIPTED[0], "id": "flaky-caller", "fail_after_tokens": 2}
    try:
        servers = [fleet.scripted(f"s{n}", [flaky]) for n in (1, 2)]
        router = fleet.router(
            {
                "clusters": {"scripted": {"endpoints": [s.address for s in servers]}},
                "routes": [
                    {"model": "flaky-caller", "resume": True, "targets": [{"cluster": "scripted"}]}
                ],
            }
        )
        chunks = []
        with Client(router.address, timeout=30) as client, pytest.raises(UnavailableError):
            for chunk in client.stream("flaky-caller", messages=QUESTION, tools=TOOLS):
                chunks.append(chunk)
        assert [p.name for c in chunks for p in c.tool_calls if p.name] == ["get_weather"]
        assert all(c.resumes == 0 for c in chunks)
    finally:
        fleet.stop()


def test_a_route_lists_tools_one_target_takes_and_its_shortest_context(fleet: Fleet) -> None:
    """A request with tools goes to the target that takes them (routing by capability),
    so the route lists tools though its fallback lacks them; a long prompt is not
    routed by length and may land on the fallback, so it lists the shortest context."""
    caller = {"id": "m", "context_length": 4096, "tool_call": SCRIPTED[0]["tool_call"]}
    first = fleet.scripted("caller", [caller])
    fallback = fleet.scripted("plain", [{"id": "m", "context_length": 2048}])
    router = fleet.router(
        {
            "clusters": {"first": {"endpoints": [first.address]},
                         "fallback": {"endpoints": [fallback.address]}},
            "routes": [
                {"model": "m", "targets": [{"cluster": "first"},
                                           {"cluster": "fallback", "priority": 1}]},
                {"model": "caller", "targets": [{"cluster": "first", "model": "m"}]},
            ],
        }
    )  # fmt: skip
    wait_healthy(router)
    with Client(router.address) as client:
        models = {m.id: m for m in client.list_models()}
    assert models["m"].healthy_replicas == 2
    assert {"tools", "strict_tools"} <= set(models["caller"].capabilities)
    assert models["caller"].context_length == 4096
    assert {"chat", "streaming", "tools", "strict_tools"} <= set(models["m"].capabilities)
    assert models["m"].context_length == 2048
    with Client(router.address) as client:  # and a tool request there is served
        answer = client.chat("m", QUESTION, tools=TOOLS)
    assert answer.tool_calls
