"""Many calls on one connection: nothing refused by HTTP/2 reaches a caller, and
overload is RESOURCE_EXHAUSTED OVERLOADED with RetryInfo, never UNAVAILABLE."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from fleet import Fleet, endpoints, wait_healthy
from processes import ServerProcess, free_port, wait_until
from scrape import scrape, value

from switchyard import AsyncClient, Client, RateLimitError
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

WORDS = " ".join(f"w{i}" for i in range(10))


def _route(model: str, **settings: Any) -> dict[str, Any]:
    return {"model": model, "targets": [{"cluster": "pool"}], **settings}


async def _call(client: AsyncClient, index: int, model: str = "echo") -> str:
    """A stream (odd ``index``) or a unary call with a unique prompt; its text if exact."""
    prompt = f"call{index} {WORDS}"
    if index % 2:
        text = "".join([chunk.text async for chunk in client.stream(model, prompt)])
    else:
        text = (await client.generate(model, prompt)).text
    assert text == prompt
    return text


def _peak_rss_mib(server: ServerProcess) -> float:
    """The process's peak resident memory (VmHWM), from /proc."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    [line] = [x for x in status.splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


async def test_one_channel_carries_1000_concurrent_streams_through_the_router(
    fleet: Fleet,
) -> None:
    models = [{"id": "echo", "token_delay_ms": 20, "concurrency": 1000}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [a.address, b.address]}},
            "routes": [_route("echo")],
        }
    )
    # One SDK client holds one channel: every stream is multiplexed on it.
    async with AsyncClient(router.address, max_retries=0, timeout=120) as client:

        async def stream(index: int) -> str:
            prompt = f"stream{index} {WORDS}"
            return "".join([chunk.text async for chunk in client.stream("echo", prompt)])

        texts = await asyncio.gather(*(stream(i) for i in range(1000)))
    assert texts == [f"stream{i} {WORDS}" for i in range(1000)]


@pytest.mark.parametrize(
    ("scope", "limits", "route"),
    [
        ("router", {"max_in_flight": 200}, {}),
        ("route", {}, {"max_in_flight": 200}),
    ],
)
async def test_calls_past_max_in_flight_get_resource_exhausted_overloaded_with_retry_info(
    fleet: Fleet, scope: str, limits: dict[str, Any], route: dict[str, Any]
) -> None:
    # Each call takes about a second: many are in progress at once.
    models = [{"id": "echo", "token_delay_ms": 100, "concurrency": 1000}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    metrics_port = free_port()
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "limits": limits,
            "clusters": {"pool": {"endpoints": [a.address, b.address]}},
            "routes": [_route("echo", **route)],
        }
    )
    async with AsyncClient(router.address, max_retries=0, timeout=120) as client:
        outcomes = await asyncio.gather(
            *(_call(client, i) for i in range(1000)), return_exceptions=True
        )
    answered = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, RateLimitError)]
    assert len(answered) + len(refused) == 1000, [
        o for o in outcomes if not isinstance(o, str | RateLimitError)
    ][:3]
    assert len(answered) >= 200 and refused  # the limit took 200 at once, and no more
    assert {(e.reason, e.retry_after) for e in refused} == {("OVERLOADED", 1.0)}
    assert {e.details.metadata["scope"] for e in refused} == {scope}
    samples = scrape(metrics_port)
    counted = value(samples, "switchyard_router_overloaded_total", model="echo", scope=scope)
    assert counted == len(refused)
    assert value(samples, "switchyard_router_in_flight_requests") == 0  # all released
    # Bounded: what 200 calls at once need, not 1,000 (the issue measured 111 MB
    # for 1,000 streams without a limit).
    assert _peak_rss_mib(router) < 200


@pytest.mark.parametrize("pool_limit", [None, 50])
async def test_a_model_server_taking_50_calls_per_connection_refuses_none_the_client_sees(
    fleet: Fleet, pool_limit: int | None
) -> None:
    server = fleet.scripted(
        "limited",
        [{"id": "echo", "token_delay_ms": 50, "concurrency": 1000}],
        limits={"max_concurrent_streams": 50},
    )
    metrics_port = free_port()
    cluster: dict[str, Any] = {"endpoints": [server.address]}
    if pool_limit is not None:  # the operator told the router the model server's limit
        cluster["connection_pool"] = {"max_concurrent_streams": pool_limit}
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "clusters": {"pool": cluster},
            "routes": [_route("echo")],
        }
    )
    async with AsyncClient(router.address, max_retries=0, timeout=120) as client:
        outcomes = await asyncio.gather(
            *(_call(client, i) for i in range(300)), return_exceptions=True
        )
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert failures == []
    [view] = endpoints(router)
    assert view.connections > 1  # the pool grew past one connection
    refused = value(
        scrape(metrics_port), "switchyard_router_upstream_refused_streams_total", cluster="pool"
    )
    if pool_limit is None:
        assert refused > 0  # it learned the limit from the refusals, and resent them
    else:
        assert refused == 0  # it never went past the configured limit


async def test_the_sdk_sends_calls_that_http2_refused_again_unary_and_streams(
    fleet: Fleet,
) -> None:
    # Called directly: 5 calls at once on a connection, 100 sent on one channel.
    server = fleet.scripted(
        "small",
        [{"id": "echo", "token_delay_ms": 5, "concurrency": 100}],
        limits={"max_concurrent_streams": 5},
    )
    async with AsyncClient(server.address, max_retries=0, timeout=60) as client:
        outcomes = await asyncio.gather(
            *(_call(client, i) for i in range(100)), return_exceptions=True
        )
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    # The blocking client too, from threads sharing its channel.
    with Client(server.address, max_retries=0, timeout=60) as blocking:

        def call(index: int) -> str:
            prompt = f"thread{index} {WORDS}"
            if index % 2:
                return "".join(chunk.text for chunk in blocking.stream("echo", prompt))
            return blocking.generate("echo", prompt).text

        with ThreadPoolExecutor(max_workers=40) as threads:
            texts = list(threads.map(call, range(80)))
    assert texts == [f"thread{i} {WORDS}" for i in range(80)]


async def test_calls_that_are_cancelled_time_out_fail_or_hit_the_cache_release_max_in_flight(
    fleet: Fleet,
) -> None:
    slow = {"id": "slow", "token_delay_ms": 300, "concurrency": 100}  # echoes, a word at a time
    fast = {"id": "fast", "reply": "cached answer"}
    server = fleet.scripted("a", [slow, fast])
    metrics_port = free_port()
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "limits": {"max_in_flight": 4},
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [
                _route("slow", targets=[{"cluster": "pool"}]),
                _route("fast", targets=[{"cluster": "pool"}], cache={"nondeterministic": True}),
                _route("gone", targets=[{"cluster": "pool", "model": "missing"}]),
            ],
        }
    )
    wait_healthy(router)

    def in_flight() -> float:
        return value(scrape(metrics_port), "switchyard_router_in_flight_requests")

    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        # Two streams the caller cancels after their first message, two calls whose
        # deadline passes, a call the model server refuses, one no endpoint serves, and
        # a cached answer.
        streams = [
            stub.StreamGenerate(pb.StreamGenerateRequest(model="slow", prompt=WORDS))
            for _ in range(2)
        ]
        for stream in streams:
            await stream.read()
        late = [
            stub.Generate(pb.GenerateRequest(model="slow", prompt=WORDS), timeout=0.5)
            for _ in range(2)
        ]
        for call in late:
            with pytest.raises(grpc.aio.AioRpcError) as timed_out:
                await call
            assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for stream in streams:
            stream.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Generate(pb.GenerateRequest(model="slow", prompt="x", sampling={"top_p": 7}))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the model server's
        with pytest.raises(grpc.aio.AioRpcError) as unserved:
            await stub.Generate(pb.GenerateRequest(model="gone", prompt="x"))
        assert unserved.value.code() == grpc.StatusCode.UNAVAILABLE  # no endpoint serves it
        # It names the endpoint's state for that model, not for the others it serves.
        assert f"cluster pool (missing): {server.address} not_serving" in (
            unserved.value.details() or ""
        )
        for _ in range(2):  # a miss, then a hit
            answer = await stub.Generate(pb.GenerateRequest(model="fast", prompt="x"))
            assert answer.text == "cached answer"
        wait_until(lambda: in_flight() == 0, "every call released")
        # All four places are free again: four calls at once are all taken.
        async with AsyncClient(router.address, max_retries=0, timeout=60) as client:
            texts = await asyncio.gather(*(_call(client, i, "slow") for i in range(4)))
        assert len(texts) == 4
