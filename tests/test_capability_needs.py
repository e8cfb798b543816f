"""Routing by capability, in process: what the byte scan reads a request to need, and
which endpoints the picker then finds eligible (on the router's own Endpoint objects,
their capabilities set as their ListModels read sets them; no connection is made)."""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator, Callable

import pytest

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.config import ClusterConfig
from switchyard_router.load_balancing import capabilities as caps
from switchyard_router.load_balancing.capabilities import needs_of
from switchyard_router.load_balancing.picker import Picker, RequestView, Target
from switchyard_router.upstream.endpoints import Cluster, Endpoint
from switchyard_router.upstream.model_catalog import capabilities_by_model

CHAT = [pb.ChatMessage(role="user", content="hi")]


def request(**fields: object) -> bytes:
    return pb.GenerateRequest(model="m", **fields).SerializeToString()  # type: ignore[arg-type]


def tool(strict: bool = False) -> pb.Tool:
    return pb.Tool(name="get_weather", parameters='{"type": "object"}', strict=strict)


def test_the_bits_are_the_contracts_capability_numbers() -> None:
    assert caps.COMPLETION == 1 << pb.CAPABILITY_COMPLETION
    assert caps.CHAT == 1 << pb.CAPABILITY_CHAT
    assert caps.LOGPROBS == 1 << pb.CAPABILITY_LOGPROBS
    assert caps.TOOLS == 1 << pb.CAPABILITY_TOOLS
    assert caps.STRICT_TOOLS == 1 << pb.CAPABILITY_STRICT_TOOLS
    assert caps.JSON_OUTPUT == 1 << pb.CAPABILITY_JSON_OUTPUT
    assert caps.GRAMMAR_OUTPUT == 1 << pb.CAPABILITY_GRAMMAR_OUTPUT
    assert caps.TOOL_CHOICE_MODE_NONE == pb.TOOL_CHOICE_MODE_NONE


def test_a_plain_chat_needs_chat_and_a_prompt_completion() -> None:
    assert needs_of(request(messages=CHAT)) == caps.CHAT
    assert needs_of(request(prompt="Once upon")) == caps.COMPLETION
    assert needs_of(request()) == 0


def test_tools_need_tools_and_a_strict_one_strict_tools() -> None:
    assert needs_of(request(messages=CHAT, tools=[tool()])) == caps.CHAT | caps.TOOLS
    strict = request(messages=CHAT, tools=[tool(), tool(strict=True)])
    assert needs_of(strict) == caps.CHAT | caps.TOOLS | caps.STRICT_TOOLS


def test_tool_choice_none_needs_no_strict_tools_but_still_tools() -> None:
    """The model server refuses tools without TOOLS whatever the choice; with choice
    none it holds no call to a schema, so strict asks nothing more."""
    none = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)
    assert needs_of(request(tools=[tool(strict=True)], tool_choice=none)) == caps.TOOLS
    named = pb.ToolChoice(name="get_weather")
    needs = needs_of(request(tools=[tool(strict=True)], tool_choice=named))
    assert needs == caps.TOOLS | caps.STRICT_TOOLS
    required = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)
    needs = needs_of(request(tools=[tool(strict=True)], tool_choice=required))
    assert needs == caps.TOOLS | caps.STRICT_TOOLS


@pytest.mark.parametrize(
    ("response_format", "needed"),
    [
        (pb.ResponseFormat(json_object=pb.JsonObjectFormat()), caps.JSON_OUTPUT),
        (pb.ResponseFormat(json_schema=pb.JsonSchemaFormat(schema="{}")), caps.JSON_OUTPUT),
        (pb.ResponseFormat(regex="[a-z]+"), caps.GRAMMAR_OUTPUT),
        (pb.ResponseFormat(grammar='root ::= "a"'), caps.GRAMMAR_OUTPUT),
        (pb.ResponseFormat(), 0),
    ],
)
def test_each_response_format_kind(response_format: pb.ResponseFormat, needed: int) -> None:
    assert needs_of(request(response_format=response_format)) == needed


def test_logprobs_when_set_zero_included() -> None:
    assert needs_of(request(sampling=pb.SamplingParams(logprobs=0))) == caps.LOGPROBS
    assert needs_of(request(sampling=pb.SamplingParams(logprobs=5))) == caps.LOGPROBS
    assert needs_of(request(sampling=pb.SamplingParams(temperature=0.5))) == 0


def test_a_stream_request_reads_the_same() -> None:
    stream = pb.StreamGenerateRequest(model="m", messages=CHAT, tools=[tool(strict=True)])
    needs = needs_of(stream.SerializeToString())
    assert needs == caps.CHAT | caps.TOOLS | caps.STRICT_TOOLS


def test_truncated_or_garbled_bytes_never_raise() -> None:
    """The worst case is "needs nothing known": routed as today, and the model server
    says what is wrong."""
    whole = request(
        messages=CHAT,
        tools=[tool(strict=True)],
        response_format=pb.ResponseFormat(regex="a"),
        sampling=pb.SamplingParams(logprobs=1),
    )
    for end in range(len(whole)):
        assert needs_of(whole[:end]) & ~caps.ROUTED == 0
    rng = random.Random(7)
    for _ in range(2000):
        garbled = bytearray(whole)
        for _ in range(rng.randint(1, 4)):
            garbled[rng.randrange(len(garbled))] = rng.randrange(256)
        assert needs_of(bytes(garbled)) & ~caps.ROUTED == 0
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        assert needs_of(noise) & ~caps.ROUTED == 0
    assert needs_of(b"\x3a\xff\xff\xff\xff\x0f") == 0  # a tools field longer than the request


def test_a_listed_models_capabilities_by_id_and_alias() -> None:
    response = pb.ListModelsResponse(
        models=[
            pb.Model(
                id="m",
                aliases=["alias"],
                capabilities=[pb.CAPABILITY_CHAT, pb.CAPABILITY_TOOLS],
            )
        ]
    )
    assert capabilities_by_model(response) == {
        "m": caps.CHAT | caps.TOOLS,
        "alias": caps.CHAT | caps.TOOLS,
    }


# The picker.

TOOLS_REQUEST = RequestView("m", needs=caps.CHAT | caps.TOOLS)
PLAIN_REQUEST = RequestView("m", needs=caps.CHAT)
WITH_TOOLS = caps.COMPLETION | caps.CHAT | caps.TOOLS
WITHOUT_TOOLS = caps.COMPLETION | caps.CHAT
Make = Callable[..., Endpoint]


@pytest.fixture
async def endpoint() -> AsyncIterator[Make]:
    """Makes endpoints (``name:1``) serving model ``m`` with capabilities (None: not
    read yet)."""
    made: list[Endpoint] = []

    def make(address: str, capabilities: int | None, serving: bool = True) -> Endpoint:
        config = ClusterConfig(endpoints=[f"{address}:1"])
        made.append(Endpoint("test", f"{address}:1", config, max_message_bytes=1 << 20))
        made[-1].set_model_health("m", serving)
        if capabilities is not None:
            made[-1].set_capabilities({"m": capabilities})
        return made[-1]

    yield make
    for e in made:
        await e.channel.close(grace=None)


def target(endpoint: Endpoint, priority: int = 0, weight: int = 1) -> Target[Endpoint]:
    return Target(endpoint.address, "m", priority, weight, {endpoint.address: endpoint})


def landed(
    picker: Picker[Endpoint], request: RequestView, count: int = 200
) -> collections.Counter[str]:
    chosen: collections.Counter[str] = collections.Counter()
    for _ in range(count):
        pick = picker.pick(request)
        assert pick is not None
        chosen[pick.endpoint.address.removesuffix(":1")] += 1
    return chosen


async def test_a_weighted_split_sends_tools_only_to_the_capable_target(endpoint: Make) -> None:
    capable, plain = endpoint("capable", WITH_TOOLS), endpoint("plain", WITHOUT_TOOLS)
    picker = Picker([target(capable), target(plain)])
    assert picker.lacking & caps.TOOLS
    assert landed(picker, TOOLS_REQUEST) == {"capable": 200}
    split = landed(picker, PLAIN_REQUEST)
    assert split["capable"] > 40 and split["plain"] > 40


async def test_tools_go_to_a_lower_priority_that_has_them(endpoint: Make) -> None:
    plain, capable = endpoint("plain", WITHOUT_TOOLS), endpoint("capable", WITH_TOOLS)
    picker = Picker([target(plain, priority=0), target(capable, priority=1)])
    assert landed(picker, TOOLS_REQUEST) == {"capable": 200}
    assert landed(picker, PLAIN_REQUEST) == {"plain": 200}


async def test_with_no_capable_endpoint_healthy_it_goes_as_today(endpoint: Make) -> None:
    """The model server's refusal then names the field: never a new error kind."""
    capable = endpoint("capable", WITH_TOOLS, serving=False)
    plain = endpoint("plain", WITHOUT_TOOLS)
    picker = Picker([target(capable), target(plain)])
    assert landed(picker, TOOLS_REQUEST) == {"plain": 200}


async def test_a_retry_keeps_to_capable_endpoints_while_one_is_left(endpoint: Make) -> None:
    first, second = endpoint("first", WITH_TOOLS), endpoint("second", WITH_TOOLS)
    plain = endpoint("plain", WITHOUT_TOOLS)
    picker = Picker([target(first), target(second), target(plain)])
    for _ in range(50):
        pick = picker.pick(TOOLS_REQUEST, exclude={first})
        assert pick is not None and pick.endpoint is second
    pick = picker.pick(TOOLS_REQUEST, exclude={first, second})
    assert pick is not None and pick.endpoint is plain  # none capable left: as today


async def test_unknown_capabilities_count_as_capable(endpoint: Make) -> None:
    unread, plain = endpoint("unread", None), endpoint("plain", WITHOUT_TOOLS)
    picker = Picker([target(unread), target(plain)])
    assert landed(picker, TOOLS_REQUEST) == {"unread": 200}


async def test_a_route_whose_targets_can_do_the_same_lacks_nothing(endpoint: Make) -> None:
    """No byte scan is needed there, and needs change nothing."""
    a, b = endpoint("a", WITH_TOOLS), endpoint("b", WITH_TOOLS)
    picker = Picker([target(a), target(b)])
    assert picker.lacking == caps.ROUTED & ~WITH_TOOLS
    assert picker.lacking & (caps.CHAT | caps.TOOLS) == 0
    split = landed(picker, TOOLS_REQUEST)
    assert split["a"] > 40 and split["b"] > 40
    unread = Picker([target(endpoint("c", None)), target(endpoint("d", None))])
    assert unread.lacking == 0


async def test_capabilities_learned_later_change_the_routes_view(endpoint: Make) -> None:
    a, b = endpoint("a", None), endpoint("b", None)
    picker = Picker([target(a), target(b)])
    assert picker.lacking == 0
    b.set_capabilities({"m": WITHOUT_TOOLS})
    assert picker.lacking & caps.TOOLS
    assert landed(picker, TOOLS_REQUEST) == {"a": 200}


async def test_needs_no_endpoint_on_the_route_has_go_as_today(endpoint: Make) -> None:
    """JSON output on a route where no model has it: the split by weight stays, and
    each model server refuses naming response_format."""
    a, b = endpoint("a", WITH_TOOLS), endpoint("b", WITHOUT_TOOLS)
    picker = Picker([target(a), target(b)])
    split = landed(picker, RequestView("m", needs=caps.CHAT | caps.JSON_OUTPUT))
    assert split["a"] > 40 and split["b"] > 40
    split = landed(picker, RequestView("m", needs=caps.TOOLS | caps.JSON_OUTPUT))
    assert split["a"] > 40 and split["b"] > 40  # all of it on none: as today


async def test_new_channels_to_the_same_model_server_keep_what_it_can_do() -> None:
    """A reload or a rotated certificate replaces every endpoint's connections: what
    each model server was known to serve holds until it is read again, so a tool
    request is not sent, meanwhile, to a replica known to refuse it."""
    config = ClusterConfig(endpoints=["127.0.0.1:9"])
    cluster = Cluster("pool", config, 1 << 20)
    await cluster.refresh(0)
    try:
        [before] = cluster.endpoints.values()
        before.set_capabilities({"m": WITHOUT_TOOLS})
        fewer = {"connection_pool": {"max_connections": 2}}  # needs new connections
        cluster.reconfigure(ClusterConfig.model_validate({**config.model_dump(), **fewer}), 0)
        [after] = cluster.endpoints.values()
        assert after is not before
        assert after.capabilities_of("m") == WITHOUT_TOOLS
    finally:
        await cluster.close()
