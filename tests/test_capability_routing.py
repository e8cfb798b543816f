"""Routing by capability through a real router: on a route whose targets differ in what
their models can do, a request lands only on a target that can serve it, while one
exists; the others split as before."""

from __future__ import annotations

import collections

import pytest
from fleet import Fleet, wait_healthy
from processes import ServerProcess, wait_until
from toolcases import QUESTION, TOOLS, WEATHER

from switchyard import Client, FinishReason, InvalidArgumentError, Tool

REQUESTS = 40
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
STRICT_WEATHER = Tool(WEATHER.name, WEATHER.description, WEATHER.parameters, strict=True)


def capabilities_read(router: ServerProcess, count: int) -> None:
    """Waits until the router logged what the models of ``count`` endpoints can do."""
    wait_until(
        lambda: router.log().count("capabilities:") >= count,
        f"{count} endpoints' capabilities read by {router.name}",
    )


def two_targets(fleet: Fleet, priorities: tuple[int, int] = (0, 0)) -> ServerProcess:
    """A router with route ``m`` over a scripted model with tools (cluster ``caller``)
    and one without (``plain``), weights 1:1, and route ``plain-only``."""
    caller = fleet.scripted("caller", [{"id": "m", "reply": "caller", "tool_call": TOOL_CALL}])
    plain = fleet.scripted("plain", [{"id": "m", "reply": "plain"}])
    router = fleet.router(
        {
            "clusters": {
                "caller": {"endpoints": [caller.address], "adapter_refresh_seconds": 0},
                "plain": {"endpoints": [plain.address], "adapter_refresh_seconds": 0},
            },
            "routes": [
                {
                    "model": "m",
                    "targets": [
                        {"cluster": "caller", "priority": priorities[0], "weight": 1},
                        {"cluster": "plain", "priority": priorities[1], "weight": 1},
                    ],
                },
                {"model": "plain-only", "targets": [{"cluster": "plain", "model": "m"}]},
            ],
        }
    )
    wait_healthy(router)
    capabilities_read(router, 2)
    return router


def test_tools_land_on_the_target_with_tools_and_the_rest_split_by_weight(
    fleet: Fleet,
) -> None:
    router = two_targets(fleet)
    with Client(router.address, timeout=30) as client:
        for index in range(REQUESTS):
            tools = TOOLS if index % 2 else [STRICT_WEATHER]
            answer = client.chat("m", QUESTION, tools=tools)  # never INVALID_ARGUMENT
            assert answer.finish_reason == FinishReason.TOOL_CALLS
            assert answer.tool_calls[0].name == "get_weather"
        served = collections.Counter(client.chat("m", QUESTION).text for _ in range(REQUESTS))
    assert set(served) == {"caller", "plain"}, served
    assert min(served.values()) >= 8, served  # 1:1 (P(fewer) < 1e-5 for either)


def test_tools_reach_a_fallback_priority_while_the_rest_stay_first(fleet: Fleet) -> None:
    router = two_targets(fleet, priorities=(1, 0))
    with Client(router.address, timeout=30) as client:
        for _ in range(REQUESTS // 2):
            answer = client.chat("m", QUESTION, tools=[STRICT_WEATHER])
            assert answer.finish_reason == FinishReason.TOOL_CALLS
        served = {client.chat("m", QUESTION).text for _ in range(REQUESTS // 2)}
    assert served == {"plain"}


def test_with_only_targets_without_tools_the_refusal_names_tools(fleet: Fleet) -> None:
    router = two_targets(fleet)
    with (
        Client(router.address, timeout=30) as client,
        pytest.raises(InvalidArgumentError) as refused,
    ):
        client.chat("plain-only", QUESTION, tools=TOOLS)
    assert "tools" in {v.field for v in refused.value.field_violations}
