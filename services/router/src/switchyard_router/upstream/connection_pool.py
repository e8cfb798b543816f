"""The router's connections to one model server: a small pool, grown on demand.

An HTTP/2 server takes at most ``max_concurrent_streams`` calls at once on one
connection and refuses the rest (REFUSED_STREAM); gRPC's client does not queue
them. So the router never puts more than the cluster's
``connection_pool.max_concurrent_streams`` calls on one connection: the first
connection with room takes the next call, and when none has room another is
opened, up to ``max_connections`` (past that the least busy one takes it).

The first connection also carries the router's own streams (the health watch,
one per model, and the out-of-band load-report stream) and ListModels; it is
never closed while the endpoint lives. Those streams count against its limit
like calls (:meth:`ConnectionPool.background_stream`): a model server told to
take 50 streams a connection counts them too. A refused stream (the
model server's limit is lower than configured) teaches the pool that
connection's real capacity: the calls it had open when it refused, less one.
What was learned is forgotten when the endpoint reconnects (a restarted model
server may have another limit).

A connection beyond the first that carried no call for the cluster's
``connection_pool.idle_timeout_seconds`` is closed (Envoy's upstream
``idle_timeout``): every second the router's sweep takes it out of the pool
(:meth:`ConnectionPool.take_idle`, synchronous, so no new call is handed to it),
then closes its channel, which carries no call by then. The next
burst opens connections again. The request path only marks a connection used
(:meth:`ConnectionPool.release`); the sweep reads the clock. Connections are
numbered in the order they were opened and a number is never reused, so a log
line naming connection 3 means one connection throughout its life; 0 is the
first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from switchyard_router.config import ConnectionPoolConfig

log = logging.getLogger("switchyard.router.connections")

GENERATE = "/switchyard.v1.LLMService/Generate"
STREAM_GENERATE = "/switchyard.v1.LLMService/StreamGenerate"
LIST_MODELS = "/switchyard.v1.LLMService/ListModels"
COUNT_TOKENS = "/switchyard.v1.LLMService/CountTokens"

ChannelFactory = Callable[[list[tuple[str, Any]]], grpc.aio.Channel]
"""Opens a channel to the model server with these extra options (TLS or not)."""


class Connection:
    """One channel (one HTTP/2 connection) and the calls open on it."""

    __slots__ = (
        "capacity",
        "channel",
        "count_tokens",
        "generate",
        "last_busy",
        "number",
        "stream_generate",
        "streams",
        "used",
    )

    def __init__(self, number: int, channel: grpc.aio.Channel, capacity: int) -> None:
        self.number = number
        """Its place in the order the pool opened connections (0: the first, never
        closed); not reused after it closes."""
        self.channel = channel
        # No (de)serializers: requests and responses pass through as bytes.
        self.generate = channel.unary_unary(GENERATE, None, None)
        self.stream_generate = channel.unary_stream(STREAM_GENERATE, None, None)
        self.count_tokens = channel.unary_unary(COUNT_TOKENS, None, None)
        self.streams = 0
        """Streams open on it now: calls, and on the first the router's own."""
        self.capacity = capacity
        """Calls it takes at once: the configured limit, or less once a refusal said so."""
        self.used = True
        """A call on it ended since the last idle sweep (set by the request path,
        cleared by the sweep: no clock on the request path)."""
        self.last_busy = time.monotonic()
        """When an idle sweep last found a call open on it or ended since the sweep
        before (or when it opened)."""


class ConnectionPool:
    """The connections to one model server."""

    def __init__(self, address: str, config: ConnectionPoolConfig, open_channel: ChannelFactory):
        self.address = address
        self.config = config
        self._open_channel = open_channel
        self._opened = 0
        self.closed = False
        self.connections = [self._connect()]

    @property
    def primary(self) -> grpc.aio.Channel:
        """The first connection's channel: health watch and ListModels."""
        return self.connections[0].channel

    def _connect(self) -> Connection:
        # A channel of its own: gRPC otherwise shares one connection between
        # channels to the same address with the same options.
        channel = self._open_channel([("grpc.use_local_subchannel_pool", 1)])
        connection = Connection(self._opened, channel, self.config.max_concurrent_streams)
        self._opened += 1
        return connection

    def acquire(self) -> Connection:
        """The connection for the next call (counted on it until :meth:`release`)."""
        connections = self.connections
        chosen: Connection | None = None
        for connection in connections:
            if connection.streams < connection.capacity:
                chosen = connection
                break
        if chosen is None:
            if len(connections) < self.config.max_connections:
                chosen = self._connect()
                connections.append(chosen)
                log.info(
                    "%s: %d calls open on each of its %d connections; opening another",
                    self.address,
                    connections[0].capacity,
                    len(connections) - 1,
                )
            else:
                chosen = min(connections, key=_busyness)
        chosen.streams += 1
        return chosen

    @contextlib.contextmanager
    def background_stream(self) -> Iterator[None]:
        """Counts a stream the router keeps open on the first connection (a health
        watch, the load-report stream) while the block runs: the model server's
        limit counts it like a call."""
        first = self.connections[0]
        first.streams += 1
        try:
            yield
        finally:
            first.streams -= 1

    def release(self, connection: Connection) -> None:
        """A call on ``connection`` ended."""
        connection.streams -= 1
        connection.used = True

    def refused(self, connection: Connection) -> None:
        """The model server refused a stream on ``connection`` (REFUSED_STREAM): it
        takes fewer calls at once than were open (this one included)."""
        # The first connection also holds the router's own streams: there, no
        # room for calls may be left.
        learned = max(0 if connection.number == 0 else 1, connection.streams - 1)
        if learned < connection.capacity:
            connection.capacity = learned
            log.info(
                "%s refused a stream with %d calls open on connection %d: taking it as its "
                "limit from now on",
                self.address,
                connection.streams,
                connection.number,
            )

    def forget_learned_limits(self) -> None:
        """The model server reconnected (perhaps restarted with another limit)."""
        for connection in self.connections:
            connection.capacity = self.config.max_concurrent_streams

    def take_idle(self, idle_timeout: float, now: float) -> list[Connection]:
        """Takes out of the pool every connection beyond the first that carried no call
        for ``idle_timeout`` seconds by ``now`` (``time.monotonic()``); returns them, for
        the caller to close.

        Called every second or so: a connection with a call open, or on which a call
        ended since the last sweep, is busy as of ``now``; so one is taken out after at
        least ``idle_timeout`` seconds without a call (at most one sweep more).
        Synchronous: once it returns, :meth:`acquire` can no longer hand them out. A
        pool being closed gives none (:meth:`close` closes them all)."""
        connections = self.connections
        if len(connections) == 1 or self.closed:  # the common case: nothing to look at
            return []
        idle: list[Connection] = []
        for connection in connections[1:]:
            if connection.streams or connection.used:
                connection.used = False
                connection.last_busy = now
            elif now - connection.last_busy >= idle_timeout:
                idle.append(connection)
        if idle:
            # In place: whoever holds the list sees the same pool.
            connections[:] = [c for c in connections if c not in idle]
            log.info(
                "%s: no call on %d of its connections for %gs; closing them (%s), %d remain",
                self.address,
                len(idle),
                idle_timeout,
                ", ".join(f"connection {c.number}" for c in idle),
                len(connections),
            )
        return idle

    async def close(self) -> None:
        """Closes every connection (an idle sweep takes none from here on)."""
        self.closed = True
        for connection in list(self.connections):
            await connection.channel.close(grace=None)


async def close_connections(idle: list[Connection]) -> None:
    """Closes connections :meth:`ConnectionPool.take_idle` took out of their pools. No
    call is on them (none for the idle timeout, and none can be handed to them now):
    closing cuts nothing."""
    await asyncio.gather(*(c.channel.close(grace=None) for c in idle))


def _busyness(connection: Connection) -> float:
    """Calls open on a connection for what it takes; one that takes none (its model
    server refused its only call) comes last."""
    if connection.capacity == 0:
        return math.inf
    return connection.streams / connection.capacity
