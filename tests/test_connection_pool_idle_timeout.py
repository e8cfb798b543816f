"""The router's connection pool shrinks after a burst: connections a burst opened to a
model server close after ``connection_pool.idle_timeout_seconds`` without a call, the
first one never, and no call is ever cut (real router and scripted model servers)."""

from __future__ import annotations

import asyncio
from typing import Any

from fleet import Fleet, wait_healthy
from processes import ServerProcess, wait_until
from scrape import scrape, value

from switchyard import AsyncClient

WORDS = " ".join(f"w{i}" for i in range(10))
OPENED = "; opening another"
CLOSED = "closing them"


def _router(fleet: Fleet, server: ServerProcess, pool: dict[str, Any]) -> ServerProcess:
    router = fleet.router(
        {
            "clusters": {
                "pool": {
                    "endpoints": [server.address],
                    "connection_pool": {"idle_timeout_seconds": 1, **pool},
                }
            },
            "routes": [{"model": "echo", "targets": [{"cluster": "pool"}]}],
        },
        metrics=True,
    )
    return wait_healthy(router)


def _connections(router: ServerProcess, address: str) -> float:
    assert router.metrics_address
    samples = scrape(router.metrics_address)
    return value(
        samples, "switchyard_router_upstream_connections", cluster="pool", endpoint=address
    )


def _idle_timeouts(router: ServerProcess) -> float:
    assert router.metrics_address
    samples = scrape(router.metrics_address)
    return value(
        samples, "switchyard_router_upstream_connection_idle_timeouts_total", cluster="pool"
    )


async def _burst(client: AsyncClient, calls: int, router: ServerProcess, address: str) -> None:
    """``calls`` streams at once; waits (while they run) until the router holds more
    than one connection to ``address``; every text exact, no call failed."""

    async def stream(index: int) -> str:
        prompt = f"call{index} {WORDS}"
        return "".join([chunk.text async for chunk in client.stream("echo", prompt)])

    running = [asyncio.ensure_future(stream(i)) for i in range(calls)]
    await asyncio.to_thread(
        wait_until,
        lambda: _connections(router, address) > 1,
        "more than one connection to the model server during the burst",
    )
    outcomes = await asyncio.gather(*running, return_exceptions=True)
    assert outcomes == [f"call{i} {WORDS}" for i in range(calls)]


async def test_connections_a_burst_opened_close_after_the_idle_timeout_and_the_next_burst_reopens(
    fleet: Fleet,
) -> None:
    server = fleet.scripted("a", [{"id": "echo", "token_delay_ms": 100, "concurrency": 1000}])
    # At most 4 calls a connection (the first also carries the health watch and the
    # load-report stream): 24 calls need about 7 connections.
    router = _router(fleet, server, {"max_concurrent_streams": 4, "max_connections": 8})
    assert _connections(router, server.address) == 1
    async with AsyncClient(router.address, max_retries=0, timeout=60) as client:
        await _burst(client, 24, router, server.address)
        opened = router.log().count(OPENED)
        assert opened >= 4  # several, not one
        # After the burst: back to the first connection alone.
        await asyncio.to_thread(
            wait_until,
            lambda: _connections(router, server.address) == 1,
            "the pool back to one connection after the burst",
        )
        assert _idle_timeouts(router) == opened
        assert CLOSED in router.log()
        # A new burst works and opens them again.
        await _burst(client, 24, router, server.address)
        assert router.log().count(OPENED) > opened
        await asyncio.to_thread(
            wait_until,
            lambda: _connections(router, server.address) == 1,
            "the pool back to one connection after the second burst",
        )
        # The first connection (health watch, load reports) stayed throughout: the
        # endpoint never left rotation, and a call still goes through.
        text = (await client.generate("echo", "after w1")).text
    assert text == "after w1"
    assert _idle_timeouts(router) == router.log().count(OPENED)


async def test_a_connection_carrying_a_stream_longer_than_the_idle_timeout_is_not_closed(
    fleet: Fleet,
) -> None:
    # 11 words at 300 ms: each stream lasts over 3 s, three idle timeouts.
    server = fleet.scripted("slow", [{"id": "echo", "token_delay_ms": 300, "concurrency": 10}])
    # One call a connection: the first is full with the router's own streams, so
    # every call goes to a connection the pool opens for it.
    router = _router(fleet, server, {"max_concurrent_streams": 1, "max_connections": 4})
    async with AsyncClient(router.address, max_retries=0, timeout=60) as client:
        await _burst(client, 2, router, server.address)  # both texts intact
    # Closed once idle, not while their streams ran.
    await asyncio.to_thread(
        wait_until,
        lambda: _connections(router, server.address) == 1,
        "the pool back to one connection after the streams",
    )
    assert _idle_timeouts(router) == router.log().count(OPENED) == 2
