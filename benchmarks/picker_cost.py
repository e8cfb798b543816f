"""What does a pick cost? The router's picker, per policy, per route size.

Each attempt of every request asks the route's picker for an endpoint
(``switchyard_router.load_balancing.picker``); a native data plane will call the same logic,
so its cost per call is measured alone here, in-process, on the router's own
Cluster and Endpoint objects (health set to SERVING, loads spread so that least_outstanding
has something to compare; no connection is made). Rounds of each policy are
interleaved so that a busy machine slows them alike.

Prints µs per pick for each policy with 2, 8 and 64 endpoints, and for a route
of two priorities of 8 endpoints whose first has half of them down (so its
requests split 70/30 by priority load), for a first attempt and for a retry (one
endpoint already tried), and the ratio of the first two policies side by side.
prefix_affinity picks with an affinity key
(the key is read from the request at admission: ``benchmarks/routing.py``
measures that too); its retries are least_outstanding's, by design.

Then routing by capability: what reading a request's needs from its bytes costs
(``capabilities.needs_of``: a plain chat, one with tools, one with a strict tool
and a JSON Schema), and a least_outstanding pick on a route of two 8-endpoint
targets of which one lacks tools and JSON output, for a request that needs nothing
and one with its needs (only the capable target's endpoints eligible).

    .venv/bin/python benchmarks/picker_cost.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import get_args

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.config import ClusterConfig
from switchyard_router.load_balancing import capabilities
from switchyard_router.load_balancing.picker import Picker, PolicyName, RequestView, Target
from switchyard_router.upstream.endpoints import Cluster, Endpoint

SIZES = (2, 8, 64)
POLICIES: tuple[PolicyName, ...] = get_args(PolicyName)
MODEL = "m"


async def _cluster(count: int, down: int = 0, subnet: int = 0) -> Cluster:
    """A cluster of ``count`` endpoints serving MODEL (the first ``down`` not serving),
    with varied loads."""
    addresses = [f"10.{subnet}.{index // 250}.{index % 250}:50061" for index in range(count)]
    cluster = Cluster("bench", ClusterConfig(endpoints=addresses), 1 << 20)
    await cluster.refresh(0)
    for index, endpoint in enumerate(cluster.endpoints.values()):
        endpoint.set_model_health(MODEL, serving=index >= down)
        endpoint.outstanding = index % 5  # varied loads: least_outstanding compares them
    return cluster


async def _routes(made: list[Cluster]) -> list[tuple[str, list[Target[Endpoint]]]]:
    """Each measured route: its label and targets (the clusters made go in ``made``)."""
    routes = []
    for size in SIZES:
        cluster = await _cluster(size)
        made.append(cluster)
        routes.append((str(size), [Target("bench", MODEL, 0, 1, cluster.endpoints, cluster.epoch)]))
    first, second = await _cluster(8, down=4), await _cluster(8, subnet=1)
    made += [first, second]
    targets = [
        Target("near", MODEL, 0, 1, first.endpoints, first.epoch),
        Target("far", MODEL, 1, 1, second.endpoints, second.epoch),
    ]
    routes.append(("8 + 8, two priorities", targets))
    return routes


def _round_us(picker: Picker[Endpoint], view: RequestView, tried: set[Endpoint], n: int) -> float:
    """µs per pick over ``n`` picks."""
    pick = picker.pick
    started = time.perf_counter_ns()
    for _ in range(n):
        pick(view, tried)
    return (time.perf_counter_ns() - started) / n / 1000


async def run(smoke: bool) -> None:
    rounds, per_round = (2, 200) if smoke else (15, 20_000)
    views = {policy: RequestView(MODEL, None, 512) for policy in POLICIES}
    views["prefix_affinity"] = RequestView(MODEL, b"a conversation's key", 512)
    made: list[Cluster] = []
    print(f"picker cost, µs per pick (median of {rounds} rounds of {per_round:,} picks)")
    header = " | ".join(f"{policy} µs" for policy in POLICIES)
    print(f"| endpoints | attempt | {header} | {POLICIES[1]} / {POLICIES[0]} |")
    print("|---|---|" + "---|" * (len(POLICIES) + 1))
    for label, targets in await _routes(made):
        tried_first = list(targets[0].endpoints.values())[-1]  # a healthy one
        pickers = {policy: Picker(targets, policy) for policy in POLICIES}
        for attempt, tried in (("first", set()), ("retry", {tried_first})):
            samples: dict[PolicyName, list[float]] = {policy: [] for policy in POLICIES}
            for _ in range(rounds):
                for policy in POLICIES:
                    samples[policy].append(
                        _round_us(pickers[policy], views[policy], tried, per_round)
                    )
            medians = [statistics.median(samples[policy]) for policy in POLICIES]
            cells = " | ".join(f"{m:.2f}" for m in medians)
            print(f"| {label} | {attempt} | {cells} | {medians[1] / medians[0]:.2f}x |")
    await _capability_routing(rounds, per_round, made)
    for cluster in made:
        await cluster.close()


def _chat(**fields: object) -> bytes:
    """A 5-turn chat of about 2.8 KB (as ``benchmarks/routing.py``'s), with ``fields``."""
    turns = [pb.ChatMessage(role="system", content="You are a helpful assistant. " * 8)]
    for turn in range(4):
        role = "user" if turn % 2 == 0 else "assistant"
        turns.append(pb.ChatMessage(role=role, content=f"turn {turn}: " + "words " * 100))
    request = pb.GenerateRequest(model=MODEL, messages=turns, **fields)  # type: ignore[arg-type]
    return request.SerializeToString()


def _scan_us(request: bytes, n: int) -> float:
    needs_of = capabilities.needs_of
    started = time.perf_counter_ns()
    for _ in range(n):
        needs_of(request)
    return (time.perf_counter_ns() - started) / n / 1000


async def _capability_routing(rounds: int, per_round: int, made: list[Cluster]) -> None:
    """Prints the scan's cost per request kind, and a pick's on a mixed route."""
    weather = pb.Tool(
        name="get_weather",
        description="Current weather in a city",
        parameters='{"type": "object", "properties": {"city": {"type": "string"}}}',
    )
    strict = pb.Tool()
    strict.CopyFrom(weather)
    strict.strict = True
    schema = pb.JsonSchemaFormat(name="city", schema='{"type": "object"}')
    kinds = {
        "plain chat": (_chat(), capabilities.CHAT),
        "chat + 2 tools": (_chat(tools=[weather, weather]), capabilities.TOOLS),
        "chat + strict tool + JSON Schema": (
            _chat(tools=[strict], response_format=pb.ResponseFormat(json_schema=schema)),
            capabilities.TOOLS,
        ),
    }
    with_tools, without = await _cluster(8), await _cluster(8, subnet=1)
    made += [with_tools, without]
    has = capabilities.COMPLETION | capabilities.CHAT
    tools = capabilities.TOOLS | capabilities.STRICT_TOOLS | capabilities.JSON_OUTPUT
    for endpoint in with_tools.endpoints.values():
        endpoint.set_capabilities({MODEL: has | tools})
    for endpoint in without.endpoints.values():
        endpoint.set_capabilities({MODEL: has})
    picker = Picker(
        [
            Target("tools", MODEL, 0, 1, with_tools.endpoints, with_tools.epoch),
            Target("plain", MODEL, 0, 1, without.endpoints, without.epoch),
        ]
    )
    print()
    print("routing by capability: reading a request's needs, and a least_outstanding pick")
    print("on a route of 8 endpoints with tools (strict too) and JSON output + 8 with")
    print("neither (µs, medians)")
    print("| request | bytes | needs scan µs | pick, needing nothing µs | pick, its needs µs |")
    print("|---|---|---|---|---|")
    for label, (request, needs) in kinds.items():
        needing = RequestView(MODEL, None, len(request), None, capabilities.needs_of(request))
        assert needing.needs & needs == needs
        plain = RequestView(MODEL, None, len(request))
        scans, bare, picks = [], [], []
        for _ in range(rounds):
            scans.append(_scan_us(request, per_round))
            bare.append(_round_us(picker, plain, set(), per_round))
            picks.append(_round_us(picker, needing, set(), per_round))
        cells = [statistics.median(samples) for samples in (scans, bare, picks)]
        print(f"| {label} | {len(request):,} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few picks: checks it runs")
    asyncio.run(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()
