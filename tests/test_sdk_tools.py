"""The Python SDK and CLI with tools, response formats and token counts: typed tools (a
Tool, OpenAI's dict, a pydantic model class), tool calls in results and streams,
blocking and asyncio alike, and the CLI's options. Pydantic is optional for the SDK
(test_units checks that importing it needs no pydantic)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pydantic
import pytest
from fleet import Fleet
from processes import ServerProcess
from toolcases import QUESTION, TOOLS, WEATHER_PARAMETERS

from switchyard import (
    AsyncClient,
    Client,
    FinishReason,
    Message,
    Regex,
    Tool,
    ToolCall,
    join_tool_calls,
)
from switchyard.cli import main as cli
from switchyard.tools import tool_messages

CALLER = {
    "id": "caller",
    "reply": "It is sunny.",
    "tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}


class GetWeather(pydantic.BaseModel):
    """Current weather in a city."""

    city: Literal["Paris", "Rome", "Oslo"]
    unit: Literal["celsius", "fahrenheit"]


class City(pydantic.BaseModel):
    name: Literal["Paris", "Rome"]
    country: Literal["France", "Italy"]


@pytest.fixture(scope="module")
def scripted(workdir: Path) -> Iterator[ServerProcess]:
    fleet = Fleet(workdir, "sdk-tools")
    server = fleet.scripted("scripted", [CALLER])
    router = fleet.router(
        {
            "clusters": {"s": {"endpoints": [server.address]}},
            "routes": [{"model": "caller", "targets": [{"cluster": "s"}]}],
        }
    )
    yield router
    fleet.stop()


def test_tools_can_be_given_as_tools_dicts_or_pydantic_models(scripted: ServerProcess) -> None:
    openai_shape = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER_PARAMETERS},
    }
    from_model = Tool.from_model(GetWeather, name="get_weather")
    with Client(scripted.address) as client:
        for tools, choice in (
            ([TOOLS[0]], TOOLS[0]),
            ([openai_shape], "get_weather"),
            ([from_model], from_model),
        ):
            answer = client.chat("caller", QUESTION, tools=tools, tool_choice=choice)
            [call] = answer.tool_calls
            assert call.name == "get_weather"
            assert GetWeather.model_validate_json(call.arguments).city == "Paris"
    tool = Tool.from_model(GetWeather)
    assert (tool.name, tool.description) == ("GetWeather", "Current weather in a city.")
    assert tool.parameters["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]


def test_strict_is_carried_from_every_tool_shape(scripted: ServerProcess) -> None:
    """``strict`` from a Tool, OpenAI's dict (``function.strict``), a plain dict and a
    pydantic model reaches the request; the scripted backend takes strict tools."""
    strict = dataclasses.replace(TOOLS[0], strict=True)
    given: list[Any] = [
        strict,
        {"type": "function", "function": {"name": "f", "strict": True}},
        {"name": "g", "parameters": WEATHER_PARAMETERS, "strict": True},
        Tool.from_model(GetWeather, strict=True),
    ]
    assert [t.strict for t in tool_messages(given)] == [True, True, True, True]
    assert [t.strict for t in tool_messages([TOOLS[0], {"name": "f"}, GetWeather])] == [
        False,
        False,
        False,
    ]
    with Client(scripted.address) as client:
        answer = client.chat("caller", QUESTION, tools=[strict], tool_choice="required")
    assert [c.name for c in answer.tool_calls] == ["get_weather"]


def test_a_strict_that_is_not_true_or_false_is_refused_not_taken_as_true(
    scripted: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tools file's ``"strict": "false"`` (a string) would otherwise make the tool
    strict: the SDK refuses it, and the CLI says so."""
    for strict in ("false", 1, "yes"):
        with pytest.raises(ValueError, match=r"tool 'f': strict is .*not true or false"):
            tool_messages([{"type": "function", "function": {"name": "f", "strict": strict}}])
    assert [t.strict for t in tool_messages([{"name": "f", "strict": None}])] == [False]
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps([{"name": "f", "strict": "false"}]))
    code = cli(["--target", scripted.address, "chat", "caller", "hi", "--tools", str(tools_file)])
    assert code == 2
    assert "strict is 'false', not true or false" in capsys.readouterr().err


def test_a_tool_round_trip_blocking_and_async(scripted: ServerProcess) -> None:
    def weather(city: str, unit: str) -> dict[str, Any]:
        return {"city": city, "degrees": 21, "unit": unit}

    with Client(scripted.address) as client:
        conversation: list[Any] = list(QUESTION)
        answer = client.chat("caller", conversation, tools=TOOLS)
        assert answer.finish_reason is FinishReason.TOOL_CALLS
        conversation.append(answer.message)
        for call in answer.tool_calls:
            conversation.append(Message.tool_result(call, weather(**call.parsed_arguments())))
        final = client.chat("caller", conversation, tools=TOOLS)
    assert final.text == "It is sunny."

    async def run() -> str:
        async with AsyncClient(scripted.address) as client:
            answer = await client.chat("caller", QUESTION, tools=TOOLS)
            results = [
                Message.tool_result(c, weather(**c.parsed_arguments())) for c in answer.tool_calls
            ]
            final = await client.chat("caller", [*QUESTION, answer.message, *results], tools=TOOLS)
            return final.text

    assert asyncio.run(run()) == "It is sunny."


def test_streamed_tool_calls_join_blocking_and_async(scripted: ServerProcess) -> None:
    with (
        Client(scripted.address) as client,
        client.stream("caller", messages=QUESTION, tools=TOOLS) as stream,
    ):
        chunks = list(stream)
    [call] = join_tool_calls(p for c in chunks for p in c.tool_calls)
    assert chunks[-1].finish_reason is FinishReason.TOOL_CALLS

    async def run() -> list[ToolCall]:
        async with AsyncClient(scripted.address) as client:
            pieces = []
            async for chunk in client.stream("caller", messages=QUESTION, tools=TOOLS):
                pieces += chunk.tool_calls
            return join_tool_calls(pieces)

    [async_call] = asyncio.run(run())
    assert (call.name, call.arguments) == (async_call.name, async_call.arguments)
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)


def test_count_tokens_blocking_and_async(scripted: ServerProcess) -> None:
    with Client(scripted.address) as client:
        counted = client.count_tokens("caller", messages=QUESTION, tools=TOOLS)

    async def run() -> int:
        async with AsyncClient(scripted.address) as client:
            return (await client.count_tokens("caller", "one two three")).prompt_tokens

    assert counted.prompt_tokens == 6 and counted.remaining == counted.context_length - 6
    assert asyncio.run(run()) == 3


def test_a_pydantic_model_is_a_response_format(llama_server: ServerProcess) -> None:
    with Client(llama_server.address, timeout=60) as client:
        answer = client.chat("tiny", QUESTION, response_format=City, max_tokens=120, seed=1)
    assert answer.finish_reason is FinishReason.STOP
    assert City.model_validate_json(answer.text).country in ("France", "Italy")


def test_cli_calls_tools_and_prints_each_call_as_json(
    scripted: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "get_weather", "parameters": WEATHER_PARAMETERS}]))
    args = ["--target", scripted.address, "chat", "caller", "Weather in Paris?"]
    assert cli([*args, "--tools", str(tools), "--tool-choice", "required"]) == 0
    call = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert cli(["--target", scripted.address, "count", "caller", "one two three"]) == 0
    assert capsys.readouterr().out.startswith("3 tokens (caller via scripted; context ")
    assert cli([*args, "--tools", str(tmp_path / "missing.json")]) == 2


def test_cli_constrains_the_answer(
    llama_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--target", llama_server.address, "generate", "tiny", "code:", "--temperature", "0"]
    assert cli([*base, "--regex", "[a-z]{3}-[0-9]{2}", "--max-tokens", "20"]) == 0
    assert re.fullmatch("[a-z]{3}-[0-9]{2}", capsys.readouterr().out.strip())
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps(City.model_json_schema()))
    assert cli([*base, "--schema", str(schema), "--max-tokens", "120"]) == 0
    City.model_validate_json(capsys.readouterr().out.strip())
    assert Regex("x").pattern == "x"
