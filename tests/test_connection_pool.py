"""The router's connection pool to one model server (``connection_pool``), on real
gRPC channels (made lazily: no model server is needed to count calls on them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc.aio
import pytest

from switchyard_router.config import ConnectionPoolConfig
from switchyard_router.upstream.connection_pool import ConnectionPool


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
