"""The router's connection pool to one model server (``connection_pool``), on real
gRPC channels (made lazily: no model server is needed to count calls on them), and
its idle timeout as a cluster applies it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
import pytest
from prometheus_client import REGISTRY

from switchyard_router.config import ClusterConfig, ConnectionPoolConfig
from switchyard_router.upstream.connection_pool import ConnectionPool, close_connections
from switchyard_router.upstream.endpoints import Cluster


@pytest.fixture
async def pool() -> AsyncIterator[ConnectionPool]:
    def open_channel(extra: list[tuple[str, Any]]) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel("127.0.0.1:9", options=extra)

    config = ConnectionPoolConfig(max_concurrent_streams=2, max_connections=2)
    made = ConnectionPool("127.0.0.1:9", config, open_channel)
    yield made
    await made.close()


async def test_a_connection_that_refused_its_first_call_is_passed_over_when_all_are_full(
    pool: ConnectionPool,
) -> None:
    # The model server refused the first connection's only call (its health watch
    # uses up what it takes): that connection takes none from now on.
    first = pool.acquire()
    pool.refused(first)
    pool.release(first)
    assert first.capacity == 0
    second = pool.acquire()
    assert second is not first
    assert pool.acquire() is second  # its second call: now both are full
    # Every connection full, no more may open: the least busy one that takes calls.
    assert pool.acquire() is second
    assert len(pool.connections) == 2


async def test_every_connection_grown_on_demand_is_closed_with_the_pool(
    pool: ConnectionPool,
) -> None:
    taken = [pool.acquire() for _ in range(4)]
    assert len(pool.connections) == 2
    for connection in taken:
        pool.release(connection)
    await pool.close()
    for connection in pool.connections:
        state = connection.channel.get_state()
        assert state is grpc.ChannelConnectivity.SHUTDOWN


async def test_a_connection_a_burst_opened_is_closed_after_the_idle_timeout_the_first_never(
    pool: ConnectionPool,
) -> None:
    taken = [pool.acquire() for _ in range(4)]
    first, second = pool.connections
    for connection in taken:
        pool.release(connection)
    start = time.monotonic()
    # The sweep that follows the burst sees both used: busy as of then.
    assert pool.take_idle(10, start) == []
    assert pool.take_idle(10, start + 9.9) == []  # not idle long enough yet
    assert pool.take_idle(10, start + 10) == [second]
    assert pool.connections == [first]
    await close_connections([second])
    assert second.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    # The first stays however long it idles.
    assert pool.take_idle(10, start + 1000) == []
    assert pool.connections == [first]


async def test_a_connection_with_a_call_open_or_a_call_since_the_last_sweep_is_not_idle(
    pool: ConnectionPool,
) -> None:
    taken = [pool.acquire() for _ in range(3)]
    second = taken[-1]
    assert second is pool.connections[1]
    start = time.monotonic()
    # A long call open on it: never idle, however long the call lasts.
    for step in range(5):
        assert pool.take_idle(1, start + 10 * step) == []
    pool.release(second)
    assert pool.take_idle(1, start + 50) == []  # it carried a call until now
    # A short call between two sweeps counts too.
    pool.release(pool.acquire())  # goes to the first, which has room again
    pool.release(taken[0])
    pool.release(taken[1])
    assert pool.acquire() is pool.connections[0]
    assert pool.acquire() is pool.connections[0]
    brief = pool.acquire()  # the first is full: the second takes it
    assert brief is second
    pool.release(brief)
    assert pool.take_idle(1, start + 50.5) == []
    assert pool.take_idle(1, start + 51.5) == [second]


async def test_a_connection_taken_out_as_idle_is_never_handed_out_again_and_numbers_go_on(
    pool: ConnectionPool,
) -> None:
    taken = [pool.acquire() for _ in range(4)]
    old = pool.connections[1]
    for connection in taken:
        pool.release(connection)
    start = time.monotonic()
    pool.take_idle(1, start)
    assert pool.take_idle(1, start + 1) == [old]
    # A new burst opens another connection, under a number of its own.
    again = [pool.acquire() for _ in range(4)]
    assert old not in again
    assert [c.number for c in pool.connections] == [0, 2]
    # It learns its limit under its own number, like any other.
    pool.refused(again[-1])
    assert again[-1].capacity == 1


async def test_a_reload_that_changes_only_the_idle_timeout_keeps_every_connection() -> None:
    config = ClusterConfig(endpoints=["127.0.0.1:9"])
    cluster = Cluster("pool", config, 1 << 20)
    await cluster.refresh(0)
    try:
        [before] = cluster.endpoints.values()
        shorter = {"connection_pool": {"idle_timeout_seconds": 5}}
        cluster.reconfigure(ClusterConfig.model_validate({**config.model_dump(), **shorter}), 0)
        assert list(cluster.endpoints.values()) == [before]  # same connections
        # The sweep follows the new timeout: a connection a burst opened goes after 5 s.
        taken = [before.pool.acquire() for _ in range(600)]
        for connection in taken:
            before.pool.release(connection)
        start = time.monotonic()
        await cluster.close_idle_connections(start)
        await cluster.close_idle_connections(start + 5)
        assert len(before.pool.connections) == 1
        # A new per-connection limit needs new connections.
        fewer = {"connection_pool": {"max_connections": 2}}
        cluster.reconfigure(ClusterConfig.model_validate({**config.model_dump(), **fewer}), 0)
        assert list(cluster.endpoints.values()) != [before]
    finally:
        await cluster.close()


async def test_a_sweep_takes_every_endpoints_idle_connections_before_it_closes_any() -> None:
    # Nothing awaits between taking and closing's start: an endpoint that leaves (DNS)
    # or is replaced (reload, rotated certificates) while the closes run is never
    # swept, and its pool's own close is not raced.
    config = ClusterConfig(endpoints=["127.0.0.1:9", "127.0.0.1:11"])
    cluster = Cluster("pool", config, 1 << 20)
    await cluster.refresh(0)
    try:
        endpoints = list(cluster.endpoints.values())
        for endpoint in endpoints:
            taken = [endpoint.pool.acquire() for _ in range(600)]
            for connection in taken:
                endpoint.pool.release(connection)
        start = time.monotonic()
        await cluster.close_idle_connections(start)
        sweep = asyncio.create_task(cluster.close_idle_connections(start + 300))
        await asyncio.sleep(0)  # the sweep ran up to its first await
        assert [len(e.pool.connections) for e in endpoints] == [1, 1]
        await sweep
    finally:
        await cluster.close()


async def test_a_pool_being_closed_gives_the_sweep_nothing_and_closes_every_connection() -> None:
    def open_channel(extra: list[tuple[str, Any]]) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel("127.0.0.1:9", options=extra)

    pool = ConnectionPool(
        "127.0.0.1:9",
        ConnectionPoolConfig(max_concurrent_streams=1, max_connections=4),
        open_channel,
    )
    taken = [pool.acquire() for _ in range(4)]
    every = list(pool.connections)
    pool.release(taken[1])  # idle; the others still carry a call (past a drain's grace)
    start = time.monotonic()
    pool.take_idle(1, start)
    closing = asyncio.create_task(pool.close())
    await asyncio.sleep(0)  # the close is under way
    assert pool.take_idle(1, start + 5) == []
    await closing
    assert [c.channel.get_state() for c in every] == [grpc.ChannelConnectivity.SHUTDOWN] * 4


def _gauge(cluster: str, address: str) -> float | None:
    return REGISTRY.get_sample_value(
        "switchyard_router_upstream_connections", {"cluster": cluster, "endpoint": address}
    )


async def test_the_connections_gauge_follows_new_pools_and_endpoints_that_leave_and_return() -> (
    None
):
    address = "127.0.0.1:9"
    config = ClusterConfig(endpoints=[address])
    elsewhere = ClusterConfig(endpoints=["127.0.0.1:11"])
    cluster = Cluster("gauge", config, 1 << 20)
    await cluster.refresh(0)
    try:
        [old] = cluster.endpoints.values()
        for _ in range(600):
            old.pool.acquire()  # calls still open: the old pool keeps 2 connections
        assert _gauge("gauge", address) == 2
        # New connection settings: a new pool, which the gauge reads from now on,
        # also once the old endpoint's drain (calls cut after its grace) ends.
        fewer = {"connection_pool": {"max_connections": 4}}
        cluster.reconfigure(ClusterConfig.model_validate({**config.model_dump(), **fewer}), 0)
        assert _gauge("gauge", address) == 1
        await asyncio.gather(*cluster._removed)
        assert _gauge("gauge", address) == 1
        # Gone from DNS: its series goes once it drained; back again: it returns.
        cluster.reconfigure(elsewhere, 0)
        await cluster.refresh(0)
        await asyncio.gather(*cluster._removed)
        assert _gauge("gauge", address) is None
        cluster.reconfigure(config, 0)
        await cluster.refresh(0)
        assert _gauge("gauge", address) == 1
        # Back while the one that left still drains: the series stays when that drain ends.
        [leaving] = cluster.endpoints.values()
        leaving.outstanding = 1
        cluster.reconfigure(elsewhere, 0)
        await cluster.refresh(60)
        cluster.reconfigure(config, 0)
        await cluster.refresh(0)
        [returned] = cluster.endpoints.values()
        assert returned is not leaving
        leaving.outstanding = 0
        await asyncio.gather(*cluster._removed)
        assert _gauge("gauge", address) == 1
    finally:
        await cluster.close()
