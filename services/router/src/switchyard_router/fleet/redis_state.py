"""Fleet state in Redis: the limits, budgets and (optionally) cached answers that every
router replica shares, so a key limited to N requests per minute gets N, not N per
replica.

Admission is one round trip: a Lua script (``lua/admit.lua``) checks the key's
rates, looks up the cached answer and reserves its budget atomically, on Redis's
clock (the admissions of one event-loop turn share a pipeline). Settlements and
cache writes are queued and sent in the background, many per round trip (a
pipeline), never on a request's path.

When Redis cannot be reached (an operation fails or takes longer than
``timeout_seconds``), the router says so once (a WARNING log line, the
``switchyard_router_redis_up`` gauge, the ``switchyard.router.redis`` health
status) and from then on does not wait for Redis: it serves on this process's own
limits (``when_unreachable: local``, failing open; the request that saw the
failure included, so none fails) or refuses keys with limits
(``when_unreachable: refuse``), while a probe tries Redis again every
``probe_seconds``; the first answer switches back, with no restart. Cache lookups
miss and writes are dropped meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from switchyard_common.status import StatusError
from switchyard_router import metrics
from switchyard_router.fleet.budget import Period, current_periods
from switchyard_router.fleet.config import RedisConfig
from switchyard_router.fleet.local import LocalFleetState
from switchyard_router.fleet.state import (
    Ask,
    FleetState,
    KeyLimits,
    Ticket,
    budget_exhausted,
    rate_limited,
)

log = logging.getLogger("switchyard.router.fleet")

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_MAX_BATCH = 512  # queued writes per pipeline
# Queued writes (settlements, cached answers) wait this long for others to share their
# round trip: they are off every request's path, and a few ms late changes nothing.
_WRITE_DELAY_SECONDS = 0.01


@dataclass(frozen=True)
class _Script:
    """A Lua script of ``lua/``, run by its SHA-1 (loaded again when Redis forgot it)."""

    text: str
    sha: str

    @classmethod
    def named(cls, name: str) -> _Script:
        text = resources.files("switchyard_router.fleet").joinpath(f"lua/{name}.lua").read_text()
        return cls(text, hashlib.sha1(text.encode()).hexdigest())


class _Batcher:
    """Sends the commands that requests issue in the same turn of the event loop as one
    pipeline: one write and one read for all of them. Each request still waits one
    round trip; under concurrency the client's CPU per command falls by half or more
    (redis-py's cost is mostly per call, not per command)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def __call__(self, *command: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((command, future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)  # after the other requests of this turn
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        results: list[Any]
        try:
            if len(batch) == 1:
                command, _ = batch[0]
                try:
                    execute = self._client.execute_command  # untyped in redis-py
                    results = [await execute(*command)]  # type: ignore[no-untyped-call]
                except _UNREACHABLE:
                    raise
                except RedisError as error:  # this command's own error (NOSCRIPT, ...)
                    results = [error]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for command, _ in batch:
                        pipe.execute_command(*command)
                    results = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # the connection's: every command in it failed
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its request was cancelled meanwhile
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)


def describe_redis(url: str) -> str:
    """Where Redis is, for logs: host:port or the socket path (never a password)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def connect(config: RedisConfig) -> aioredis.Redis:
    """A client whose operations fail fast: no retries, ``timeout_seconds`` each."""
    options: dict[str, Any] = {
        "max_connections": config.max_connections,
        "timeout": config.timeout_seconds,  # waiting for a free connection
        "socket_timeout": config.timeout_seconds,
        "socket_connect_timeout": config.timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
        "client_name": "switchyard-router",
    }
    if config.username is not None:
        options["username"] = config.username
    try:
        password = config.password()
    except OSError:
        password = None  # Redis refuses the connection: local limits, and a log line
    if password is not None:
        options["password"] = password
    if config.tls is not None:
        if config.tls.ca_file is not None:
            options["ssl_ca_certs"] = str(config.tls.ca_file)
        if config.tls.cert_file is not None and config.tls.key_file is not None:
            options["ssl_certfile"] = str(config.tls.cert_file)
            options["ssl_keyfile"] = str(config.tls.key_file)
    pool = aioredis.BlockingConnectionPool.from_url(config.url, **options)
    return aioredis.Redis(connection_pool=pool)


class RedisFleetState(FleetState):
    """Limits and budgets (``shares_limits``) and cached answers (``shares_cache``) in
    Redis; what is not shared, and everything while Redis is unreachable, in ``local``."""

    shared = True

    def __init__(
        self,
        config: RedisConfig,
        local: LocalFleetState,
        *,
        shares_limits: bool,
        shares_cache: bool,
        on_reachability: Callable[[bool], None] = lambda up: None,
    ) -> None:
        self.config = config
        self.local = local
        self.shares_limits = shares_limits
        self.shares_cache = shares_cache
        self.where = describe_redis(config.url)
        self.up = False
        """Whether Redis answered the last time it was asked."""
        self._on_reachability = on_reachability
        self._client = connect(config)
        self._batched = _Batcher(self._client)
        self._admit = _Script.named("admit")
        self._extend = _Script.named("extend")
        self._settle = _Script.named("settle")
        self._prefix = config.key_prefix
        self._writes: list[tuple[str, list[Any], list[Any]]] = []
        self._written = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Checks Redis once (so health is right from the start), then keeps writing
        and watching it."""
        try:
            await self._client.ping()
        except (*_UNREACHABLE, RedisError) as error:
            self._announce_down(error)
        else:
            self.up = True
            metrics.REDIS_UP.set(1)
            self._on_reachability(True)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._write_forever(), name="redis writes"))
        self._tasks.append(loop.create_task(self._watch_forever(), name="redis watch"))

    # --- admission ---------------------------------------------------------------------

    async def admit(self, ask: Ask) -> Ticket:
        limits = ask.limits if self.shares_limits else None
        remote_lookup = self.shares_cache and ask.cache_key is not None
        if limits is None and not remote_lookup:
            return self.local.admit_now(ask)
        if not self.up:
            if limits is not None and self.config.when_unreachable == "refuse":
                raise self._limits_unavailable()
            return self.local.admit_now(ask)
        local_limits = ask.limits if not self.shares_limits else None
        if local_limits is not None:  # limits here, cache in Redis: refuse before asking
            self.local.limiter(local_limits).check()
        cached = None
        if not remote_lookup and ask.cache_key is not None and self.local.cache is not None:
            cached = self.local.cache.get(ask.cache_key)
        periods: tuple[Period, ...] = ()
        reserve = 0
        if limits is not None and limits.budget is not None and cached is None and ask.reserve:
            periods = current_periods(limits.budget)
            reserve = ask.reserve
        keys, args = self._admit_call(limits, periods, reserve, ask, remote_lookup)
        try:
            answer = await self._run(self._admit, keys, args)
        except _UNREACHABLE as error:
            self._went_down(error)
            return await self.admit(ask)  # now on local limits (or refused)
        except RedisError as error:
            log.error("Redis at %s refused admission (%s): using local limits", self.where, error)
            metrics.REDIS_ERRORS.inc()
            return self.local.admit_now(ask)
        outcome = int(answer[0])
        if outcome:
            raise self._refusal(outcome, answer[1], limits, periods, reserve)
        if cached is None and len(answer) > 2 and answer[2] is not None:
            cached = bytes(answer[2])
        if local_limits is not None:  # counted here: take the request, reserve here
            local = Ask(local_limits, ask.reserve if cached is None else 0, ask.partial)
            ticket = self.local.admit_now(local, look_up=False)
            ticket.cached = cached
            return ticket
        return Ticket(ask.limits, int(answer[1]), periods, cached, shared=limits is not None)

    def _admit_call(
        self,
        limits: KeyLimits | None,
        periods: tuple[Period, ...],
        reserve: int,
        ask: Ask,
        look_up: bool,
    ) -> tuple[list[Any], list[Any]]:
        request_rate = token_rate = 0.0
        request_burst = token_burst = 0.0
        key_id = ""
        if limits is not None:
            key_id = limits.key_id
            if limits.requests_per_minute:
                request_rate, request_burst = limits.requests_per_minute / 60, limits.request_burst
            if limits.tokens_per_minute:
                token_rate, token_burst = limits.tokens_per_minute / 60, limits.token_burst
        day, month = self._budget_args(key_id, periods)
        cache = self._cache_key(ask.cache_key) if look_up and ask.cache_key else ""
        keys = [
            self._key("requests", key_id),
            self._key("tokens", key_id),
            day[0],
            month[0],
            cache,
        ]
        args = [
            repr(request_rate),
            repr(request_burst),
            repr(token_rate),
            repr(token_burst),
            day[1],
            day[2],
            month[1],
            month[2],
            reserve,
            1 if ask.partial else 0,
            1 if look_up else 0,
        ]
        return keys, args

    def _budget_args(
        self, key_id: str, periods: tuple[Period, ...]
    ) -> tuple[tuple[str, int, int], tuple[str, int, int]]:
        """(counter key, budget, ttl) of the day and month periods (budget 0: none)."""
        found = {p.name: (self._key("budget", key_id, p.name, p.id), p.budget, p.ttl_seconds)
                 for p in periods}  # fmt: skip
        none = (self._key("budget", key_id, "none"), 0, 0)
        return found.get("day", none), found.get("month", none)

    def _refusal(
        self,
        outcome: int,
        value: Any,
        limits: KeyLimits | None,
        periods: tuple[Period, ...],
        reserve: int,
    ) -> StatusError:
        assert limits is not None  # only limits refuse
        if outcome == 1:
            assert limits.requests_per_minute is not None
            return rate_limited(
                "requests_per_minute",
                limits.requests_per_minute,
                limits.request_burst,
                float(value),
            )
        if outcome == 2:
            assert limits.tokens_per_minute is not None
            return rate_limited(
                "tokens_per_minute", limits.tokens_per_minute, limits.token_burst, float(value)
            )
        name = "day" if outcome == 3 else "month"
        period = next(p for p in periods if p.name == name)
        return budget_exhausted(period, int(value), reserve)

    def _limits_unavailable(self) -> StatusError:
        return StatusError(
            grpc.StatusCode.UNAVAILABLE,
            "this API key's limits cannot be checked: the fleet's Redis is unreachable "
            "(when_unreachable: refuse)",
            reason="LIMITS_UNAVAILABLE",
            retry_after=self.config.probe_seconds,
        )

    # --- during and after a request ----------------------------------------------------

    async def extend(self, ticket: Ticket, tokens: int) -> int:
        if not ticket.shared:
            return await self.local.extend(ticket, tokens)
        assert ticket.limits is not None
        if self.up:
            day, month = self._budget_args(ticket.limits.key_id, ticket.periods)
            try:
                more = int(
                    await self._run(
                        self._extend,
                        [day[0], month[0]],
                        [day[1], day[2], month[1], month[2], tokens],
                    )
                )
            except _UNREACHABLE as error:
                self._went_down(error)
            except RedisError as error:
                log.error("Redis at %s refused a budget extension: %s", self.where, error)
                metrics.REDIS_ERRORS.inc()
            else:
                if more < 0:  # -1: the day's budget is spent, -2: the month's
                    name = "day" if more == -1 else "month"
                    ticket.spent = next(p for p in ticket.periods if p.name == name)
                    return 0
                ticket.granted += more
                return more
        if self.config.when_unreachable == "refuse":
            return 0
        # Fail open: this process's own ledger pays for the rest of the stream.
        return await self.local.extend(ticket, tokens)

    def settle(self, ticket: Ticket, used: int) -> None:
        limits = ticket.limits
        if limits is None:
            return
        if not ticket.shared:
            self.local.settle(ticket, used)
            return
        if not limits.tokens_per_minute and used == ticket.granted:
            return  # nothing changes
        day, month = self._budget_args(limits.key_id, ticket.periods)
        token_rate = limits.tokens_per_minute / 60 if limits.tokens_per_minute else 0.0
        self._queue(
            "settle",
            [self._key("tokens", limits.key_id), day[0], month[0]],
            [
                repr(token_rate),
                repr(limits.token_burst),
                used,
                ticket.granted,
                1 if day[1] else 0,
                1 if month[1] else 0,
            ],
        )

    def store(self, key: bytes, entry: bytes, ttl_seconds: float, model: str) -> None:
        if not self.shares_cache:
            self.local.store(key, entry, ttl_seconds, model)
        elif self.up:
            self._queue(
                "set", [self._cache_key(key)], [entry, max(1, int(ttl_seconds * 1000)), model]
            )

    def forget_keys_except(self, key_ids: set[str]) -> None:
        self.local.forget_keys_except(key_ids)

    def _queue(self, kind: str, keys: list[Any], args: list[Any]) -> None:
        if len(self._writes) >= 100 * _MAX_BATCH:
            return  # Redis is slower than the requests: settlements are best effort
        self._writes.append((kind, keys, args))
        self._written.set()

    async def _run(self, script: _Script, keys: list[Any], args: list[Any]) -> Any:
        """Runs a script: one round trip, shared with the other requests of this turn
        of the event loop (two more, once, after a restarted Redis forgot it)."""
        try:
            return await self._batched("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(script.text)
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    async def _write_forever(self) -> None:
        while True:
            await self._written.wait()
            await asyncio.sleep(_WRITE_DELAY_SECONDS)
            self._written.clear()
            while self._writes:
                batch, self._writes = self._writes[:_MAX_BATCH], self._writes[_MAX_BATCH:]
                if self.up:
                    await self._write(batch)

    async def _write(self, batch: list[tuple[str, list[Any], list[Any]]]) -> None:
        """Sends queued writes in one pipeline (settlements again, once, if Redis had
        forgotten the script)."""
        stored: list[str] = []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for kind, keys, args in batch:
                    if kind == "settle":
                        pipe.evalsha(self._settle.sha, len(keys), *keys, *args)
                    else:
                        entry, ttl_ms, model = args
                        pipe.set(keys[0], entry, px=ttl_ms)
                        stored.append(model)
                results = await pipe.execute(raise_on_error=False)
            forgotten = [
                op for op, result in zip(batch, results, strict=True)
                if isinstance(result, NoScriptError)
            ]  # fmt: skip
            if forgotten:
                await self._client.script_load(self._settle.text)
                async with self._client.pipeline(transaction=False) as pipe:
                    for _, keys, args in forgotten:
                        pipe.evalsha(self._settle.sha, len(keys), *keys, *args)
                    await pipe.execute(raise_on_error=False)
        except _UNREACHABLE as error:
            self._went_down(error)
            return
        except RedisError as error:
            log.error("Redis at %s refused %d writes: %s", self.where, len(batch), error)
            metrics.REDIS_ERRORS.inc()
            return
        for model in stored:
            metrics.CACHE_STORES.labels(model).inc()

    # --- reachability ------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        """Pings Redis every ``probe_seconds``, so that health follows it even without
        requests, and a Redis that is back is used again."""
        while True:
            await asyncio.sleep(self.config.probe_seconds)
            await self._check()

    async def _check(self) -> None:
        try:
            await self._client.ping()
        except (*_UNREACHABLE, RedisError) as error:
            if self.up:
                self._went_down(error)
            return
        if not self.up:
            self._came_back()

    def _went_down(self, error: object) -> None:
        """Stops waiting for Redis after a failed operation (once: later failures of
        operations already under way change nothing)."""
        metrics.REDIS_ERRORS.inc()
        if self.up:
            self._announce_down(error)

    def _announce_down(self, error: object) -> None:
        self.up = False
        metrics.REDIS_UP.set(0)
        if not self.shares_limits:
            what = "the response cache misses until it is back"
        elif self.config.when_unreachable == "local":
            what = "serving on this router's own limits until it is back"
        else:
            what = "refusing requests of keys with limits until it is back"
        log.warning("Redis at %s is unreachable (%s): %s", self.where, _describe(error), what)
        self._on_reachability(False)
        # Connections from before the failure are broken: the next ones start afresh.
        loop = asyncio.get_running_loop()
        reset = loop.create_task(
            self._client.connection_pool.disconnect(inuse_connections=True), name="redis reset"
        )
        self._tasks.append(reset)
        reset.add_done_callback(self._tasks.remove)

    def _came_back(self) -> None:
        self.up = True
        metrics.REDIS_UP.set(1)
        shared = "limits are shared by the fleet" if self.shares_limits else "cache in use"
        log.info("Redis at %s is reachable again: %s", self.where, shared)
        self._on_reachability(True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.up and self._writes:
            await self._write(self._writes[:_MAX_BATCH])
        await self._batched.close()
        await self._client.aclose()

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _cache_key(self, key: bytes) -> str:
        return f"{self._prefix}:cache:{key.hex()}"


def _describe(error: object) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return str(error)
