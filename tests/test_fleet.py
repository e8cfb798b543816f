"""Router fleets: per-key limits, token budgets and the response cache shared by router
processes through one real Redis (Debian's redis-server), and what happens when that
Redis dies and comes back.

Every router, model server and Redis here is a real process on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import secrets
import signal
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import secretscan
import trustme
from conftest import MODELSERVER, ROUTER, write_config
from fleet import wait_healthy
from processes import ServerProcess, free_port, health_status, wait_until
from redisserver import RedisServer
from scrape import scrape, value

from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_router.fleet import Ask, KeyLimits
from switchyard_router.fleet.config import RedisConfig, TokenBudgetConfig
from switchyard_router.fleet.local import LocalFleetState
from switchyard_router.fleet.redis_state import RedisFleetState

REDIS_HEALTH = "switchyard.router.redis"
CANNED = "The capital of France is Paris."  # 6 tokens for the scripted backend
COUNTING = " ".join(f"w{n}" for n in range(1, 41))  # 40 tokens
Metadata = tuple[tuple[str, str], ...]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fleet")
    secretscan.watch(path)
    return path


# A key with no limits on every router with auth: the tests' own, to ask the router
# (RouterAdminService) whether it sees its endpoints healthy before a test starts.
_OBSERVER = f"sk-fleet-observer-{secrets.token_urlsafe(18)}"
secretscan.register(_OBSERVER)


def _start(folder: Path, name: str, module: str, config: dict[str, Any]) -> ServerProcess:
    path = write_config(folder / f"{name}.yaml", config)
    server = ServerProcess(name, module, path, free_port(), folder)
    server.wait_serving()
    if module != ROUTER:
        return server
    observer = (("authorization", f"Bearer {_OBSERVER}"),) if "auth" in config else ()
    return wait_healthy(server, observer)


@pytest.fixture(scope="module")
def upstream(folder: Path, servers: list[ServerProcess]) -> ServerProcess:
    """A scripted model server that sends every token as its own message."""
    models = [
        {"id": "canned", "reply": CANNED},
        {"id": "slow", "reply": CANNED, "token_delay_ms": 150},
        {"id": "counting", "reply": COUNTING, "token_delay_ms": 5},
    ]
    config = {"stream_coalesce_ms": 0, "backend": {"kind": "scripted", "models": models}}
    server = _start(folder, "fleet-modelserver", MODELSERVER, config)
    servers.append(server)
    return server


@pytest.fixture(scope="module")
def redis_server(folder: Path) -> Iterator[RedisServer]:
    server = RedisServer(folder)
    yield server
    server.stop()


@dataclass
class Keys:
    """API keys (the text callers send) by the id the config gives them."""

    texts: dict[str, str] = field(default_factory=dict)

    def __call__(self, key_id: str) -> Metadata:
        """The caller's metadata for key ``key_id`` (made on first use)."""
        if key_id not in self.texts:
            self.texts[key_id] = f"sk-fleet-{secrets.token_urlsafe(18)}"
            secretscan.register(self.texts[key_id])
        return (("authorization", f"Bearer {self.texts[key_id]}"),)

    def config(self, key_id: str, **limits: Any) -> dict[str, Any]:
        self(key_id)
        digest = hashlib.sha256(self.texts[key_id].encode()).hexdigest()
        return {"id": key_id, "sha256": digest, **limits}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def _routes() -> list[dict[str, Any]]:
    return [
        {"model": "canned", "targets": [{"cluster": "pool"}]},
        {"model": "slow", "targets": [{"cluster": "pool"}]},
        {"model": "counting", "targets": [{"cluster": "pool"}]},
        {
            "model": "cached",  # each key (or cache_scope) has its own answers
            "targets": [{"cluster": "pool", "model": "canned"}],
            "cache": {"ttl_seconds": 600},
        },
        {
            "model": "cached-shared",
            "targets": [{"cluster": "pool", "model": "canned"}],
            "cache": {"ttl_seconds": 600, "scope": "shared"},
        },
        {
            "model": "cached-any",  # sampled answers are cached too
            "targets": [{"cluster": "pool", "model": "canned"}],
            "cache": {"ttl_seconds": 600, "scope": "shared", "nondeterministic": True},
        },
        {
            "model": "cached-briefly",
            "targets": [{"cluster": "pool", "model": "canned"}],
            "cache": {"ttl_seconds": 1, "scope": "shared"},
        },
        {
            "model": "cached-stream",
            "targets": [{"cluster": "pool", "model": "counting"}],
            "cache": {"ttl_seconds": 600, "scope": "shared"},
        },
    ]


def _router_config(
    upstream: ServerProcess,
    redis: RedisServer | None,
    key_configs: list[dict[str, Any]],
    redis_settings: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "clusters": {"pool": {"endpoints": [upstream.address]}},
        "routes": _routes(),
        **settings,
    }
    if key_configs:
        observer = {"id": "observer", "sha256": hashlib.sha256(_OBSERVER.encode()).hexdigest()}
        config["auth"] = {"keys": [*key_configs, observer]}
    if redis is not None:
        config["redis"] = {"url": redis.url, "probe_seconds": 0.2, **(redis_settings or {})}
    return config


def _fleet_keys(keys: Keys) -> list[dict[str, Any]]:
    """The keys the shared pair of routers knows, one or more per test."""
    return [
        keys.config("six-a-minute", requests_per_minute=6),
        keys.config("six-at-once", requests_per_minute=6),
        keys.config("reserving", token_budget={"per_day": 40}),
        keys.config("streaming", token_budget={"per_day": 12, "reserve_tokens": 4}),
        keys.config("cache-budget", token_budget={"per_month": 10_000}),
        keys.config("alice"),
        keys.config("bob"),
        keys.config("carol", cache_scope="team"),
        keys.config("dave", cache_scope="team"),
    ]


@pytest.fixture(scope="module")
def pair(
    folder: Path,
    servers: list[ServerProcess],
    upstream: ServerProcess,
    redis_server: RedisServer,
    keys: Keys,
) -> tuple[ServerProcess, ServerProcess]:
    """Two routers sharing one Redis for limits, budgets and cached answers."""
    config = _router_config(
        upstream,
        redis_server,
        _fleet_keys(keys),
        limits_backend="redis",
        response_cache={"backend": "redis"},
    )
    routers = (
        _start(folder, "fleet-router-a", ROUTER, config),
        _start(folder, "fleet-router-b", ROUTER, config),
    )
    servers.extend(routers)
    return routers


# --- helpers ---------------------------------------------------------------------------


def _request(model: str, prompt: str = "hi", **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(**sampling))


def _generate(
    router: ServerProcess, request: pb.GenerateRequest, metadata: Metadata = ()
) -> tuple[pb.GenerateResponse, dict[str, str]]:
    """The answer and the response's initial metadata."""
    with grpc.insecure_channel(router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        response, call = stub.Generate.with_call(request, timeout=10, metadata=metadata)
        return response, _headers(call.initial_metadata())


def _stream(
    router: ServerProcess, request: pb.GenerateRequest, metadata: Metadata = ()
) -> tuple[list[pb.StreamGenerateResponse], dict[str, str]]:
    streamed = pb.StreamGenerateRequest()
    streamed.ParseFromString(request.SerializeToString())  # the same fields and numbers
    with grpc.insecure_channel(router.address) as channel:
        call = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            streamed, timeout=10, metadata=metadata
        )
        messages = list(call)
        return messages, _headers(call.initial_metadata())


def _headers(metadata: Any) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


def _refusal(action: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        action()
    return caught.value


def _budget_used(redis: RedisServer, key_id: str, period: str = "day") -> int:
    """What Redis holds for the key's current budget period (reserved or spent)."""
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y-%m-%d") if period == "day" else now.strftime("%Y-%m")
    with redis.client() as client:
        value = client.get(f"switchyard:budget:{key_id}:{period}:{stamp}")
    return int(value or 0)


def _cached_entries(redis: RedisServer) -> int:
    with redis.client() as client:
        return len(client.keys("switchyard:cache:*"))


def _access_lines(router: ServerProcess, *needles: str) -> list[str]:
    return [
        line
        for line in router.log().splitlines()
        if "request method=" in line and all(n in f"{line} " for n in needles)
    ]


def _wait_for_log(router: ServerProcess, *needles: str, count: int = 1) -> list[str]:
    wait_until(lambda: len(_access_lines(router, *needles)) >= count, f"log lines {needles}")
    return _access_lines(router, *needles)


# --- limits shared by the fleet ---------------------------------------------------------


def _outcomes(routers: tuple[ServerProcess, ...], metadata: Metadata, count: int) -> list[Any]:
    """Alternating between the routers: OK, or the refusal's details."""
    outcomes: list[Any] = []
    for index in range(count):
        try:
            _generate(routers[index % len(routers)], _request("canned"), metadata)
            outcomes.append("OK")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            outcomes.append(parse_details(error.trailing_metadata()))
    return outcomes


def test_a_key_limited_to_n_requests_a_minute_gets_n_in_total_across_two_routers(
    pair: tuple[ServerProcess, ServerProcess], keys: Keys
) -> None:
    outcomes = _outcomes(pair, keys("six-a-minute"), 12)
    assert outcomes.count("OK") == 6  # not 6 per router
    refusals = [o for o in outcomes if o != "OK"]
    assert {r.reason for r in refusals} == {"RATE_LIMITED"}
    assert {r.metadata["limit"] for r in refusals} == {"requests_per_minute"}
    # Six a minute: the next one in at most ten seconds, stated by either router.
    assert all(r.retry_after is not None and 0 < r.retry_after <= 10 for r in refusals)


def test_concurrent_requests_on_two_routers_never_get_more_than_the_limit(
    pair: tuple[ServerProcess, ServerProcess], keys: Keys
) -> None:
    """24 requests at once, 12 on each router: the admission script is atomic, so
    exactly 6 pass, whichever router and in whatever order they reach Redis."""
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def call(router: ServerProcess) -> None:
        start.wait()
        try:
            _generate(router, _request("canned"), keys("six-at-once"))
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = error.code().name
        with lock:
            outcomes.append(outcome)

    callers = [threading.Thread(target=call, args=(pair[i % 2],)) for i in range(24)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert sorted(outcomes) == ["OK"] * 6 + ["RESOURCE_EXHAUSTED"] * 18


def test_with_local_limits_each_router_counts_alone(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    # The problem the shared limits solve: two routers on local limits allow twice.
    config = _router_config(upstream, None, [keys.config("local-six", requests_per_minute=6)])
    routers = (
        _start(folder, "local-router-a", ROUTER, config),
        _start(folder, "local-router-b", ROUTER, config),
    )
    servers.extend(routers)
    assert _outcomes(routers, keys("local-six"), 12).count("OK") == 12


def _scripts_run(redis: RedisServer) -> int:
    """How many Lua scripts (admissions, extensions, settlements) Redis has run (not
    counting the calls that found it did not know a script yet)."""
    with redis.client() as client:
        stats = client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) - int(stats.get(name, {}).get("failed_calls", 0))
        for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


def test_a_key_with_only_a_request_rate_costs_one_round_trip_and_no_settlement(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    """Counted at admission, nothing to settle: its answers are neither read for usage
    nor followed by a write to Redis."""
    redis = RedisServer(folder, "redis-counted")
    try:
        key_configs = [
            keys.config("rate-only", requests_per_minute=1000),
            keys.config("budgeted", token_budget={"per_day": 1000}),
        ]
        config = _router_config(upstream, redis, key_configs, limits_backend="redis")
        router = _start(folder, "counted-router", ROUTER, config)
        servers.append(router)
        _wait_for_health((router,), "SERVING")
        for _ in range(3):
            _generate(router, _request("canned"), keys("rate-only"))
        _stream(router, _request("canned"), keys("rate-only"))
        _generate(router, _request("canned", max_tokens=50), keys("budgeted"))
        # Settlements are written in order: once the budgeted one landed, any of the
        # rate-only key's would have too.
        wait_until(lambda: _budget_used(redis, "budgeted") == 7, "the budgeted settlement")
        assert _scripts_run(redis) == 5 + 1  # five admissions, one settlement
    finally:
        redis.stop()


# --- token budgets -----------------------------------------------------------------------


def test_a_budget_is_reserved_at_admission_and_settled_to_the_usage(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    metadata = keys("reserving")  # 40 tokens a day
    streamed = pb.StreamGenerateRequest(
        model="slow", prompt="hi", sampling=pb.SamplingParams(max_tokens=10)
    )
    with grpc.insecure_channel(pair[0].address) as channel:
        stream = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            streamed, timeout=10, metadata=metadata
        )
        first = next(iter(stream))  # admitted on router A: its max_tokens (10) are reserved
        assert first.text
        # Router B sees the reservation: 30 tokens left, not 40.
        refused = _refusal(lambda: _generate(pair[1], _request("canned", max_tokens=31), metadata))
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = parse_details(refused.trailing_metadata())
        assert details.reason == "BUDGET_EXHAUSTED"
        assert details.metadata == {"limit": "token_budget.per_day"}
        assert details.retry_after is not None and 0 < details.retry_after <= 86_400
        assert "30 tokens are left" in (refused.details() or "")
        answer, _ = _generate(pair[1], _request("canned", max_tokens=30), metadata)
        rest = list(stream)
    usage = rest[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (1, 6)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (1, 6)
    # Both settled from their usage (prompt + completion), replacing the 10 + 30 reserved.
    wait_until(lambda: _budget_used(redis_server, "reserving") == 14, "settlements")


# In this process, against a real Redis: what the fleet state does when a request is
# abandoned mid-question, or ends while Redis cannot be reached.


@pytest.fixture
async def shared_state(folder: Path, request: pytest.FixtureRequest) -> AsyncIterator[
    tuple[RedisFleetState, RedisServer]
]:  # fmt: skip
    """A RedisFleetState of this process on a Redis of its own."""
    redis = RedisServer(folder, f"redis-{request.node.name}")
    config = RedisConfig(url=redis.url, timeout_seconds=0.3, probe_seconds=0.05)
    state = RedisFleetState(config, LocalFleetState(), shares_limits=True, shares_cache=False)
    await state.start()
    yield state, redis
    await state.close()
    redis.stop()


async def _until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


def _budgeted(key_id: str) -> KeyLimits:
    limits = KeyLimits.of(key_id, None, None, None, None, TokenBudgetConfig(per_day=1000))
    assert limits is not None
    return limits


async def test_a_reservation_whose_request_left_while_redis_answered_is_given_back(
    shared_state: tuple[RedisFleetState, RedisServer],
) -> None:
    """A caller that leaves (or whose deadline passes) while admission or an extension
    waits for Redis does not stop the script: what it reserves is given back."""
    state, redis = shared_state
    warm_up = await state.admit(Ask(_budgeted("warm-up"), reserve=1, partial=True))
    await state.extend(warm_up, 1)  # Redis knows both scripts now, as it does in service
    limits = _budgeted("left-early")
    admission = asyncio.ensure_future(state.admit(Ask(limits, reserve=100)))
    await asyncio.sleep(0)  # its script is on its way to Redis
    admission.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admission
    ticket = await state.admit(Ask(limits, reserve=5, partial=True))
    extension = asyncio.ensure_future(state.extend(ticket, 50))
    await asyncio.sleep(0)
    extension.cancel()
    with pytest.raises(asyncio.CancelledError):
        await extension
    state.settle(ticket, 3)
    # 100 reserved and given back, 50 more and given back, 5 reserved and 3 used.
    await _until(lambda: _budget_used(redis, "left-early") == 3, "the key's budget at 3")


async def test_settlements_made_while_redis_is_unreachable_are_sent_when_it_is_back(
    shared_state: tuple[RedisFleetState, RedisServer],
) -> None:
    """A Redis cut off for a while (here: stopped, keeping its data) still holds the
    reservations of requests that end meanwhile: their settlements wait for it."""
    state, redis = shared_state
    limits = _budgeted("cut-off")
    ticket = await state.admit(Ask(limits, reserve=100))
    assert ticket.shared and _budget_used(redis, "cut-off") == 100
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        await _until(lambda: not state.up, "Redis seen as unreachable")
        state.settle(ticket, 7)  # the request ends while Redis cannot be reached
        # The background writer takes its turn (and clears its signal) while Redis is away.
        await _until(lambda: not state._written.is_set(), "the writer's turn")
    finally:
        redis.process.send_signal(signal.SIGCONT)
    await _until(lambda: state.up, "Redis reachable again")
    await _until(lambda: _budget_used(redis, "cut-off") == 7, "the settlement after the outage")


async def test_a_stream_that_borrows_locally_during_an_outage_settles_in_redis_by_its_usage(
    shared_state: tuple[RedisFleetState, RedisServer],
) -> None:
    """A stream Redis admitted that outgrows its reservation while Redis cannot be
    reached goes on, on this process's own ledger (fail open); when it ends, Redis is
    charged its usage and the tokens borrowed here are returned here."""
    state, redis = shared_state
    limits = _budgeted("borrower")
    ticket = await state.admit(Ask(limits, reserve=5, partial=True))
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)
    try:
        await _until(lambda: not state.up, "Redis seen as unreachable")
        assert await state.extend(ticket, 20) == 20  # borrowed from the local ledger
    finally:
        redis.process.send_signal(signal.SIGCONT)
    await _until(lambda: state.up, "Redis reachable again")
    state.settle(ticket, 12)
    await _until(lambda: _budget_used(redis, "borrower") == 12, "Redis charged the usage")
    assert state.local.budgets.reserve("borrower", ticket.periods, 1000, partial=False) == 1000


def test_a_stream_is_cut_when_its_budget_runs_out_after_the_tokens_paid_for(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    metadata = keys("streaming")  # 12 tokens a day, 4 reserved at a time
    received: list[str] = []
    request = pb.StreamGenerateRequest(model="counting", prompt="hi")  # 40 tokens, no max_tokens
    with grpc.insecure_channel(pair[0].address) as channel:
        stream = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            request, timeout=10, metadata=metadata
        )
        with pytest.raises(grpc.RpcError) as caught:
            for message in stream:
                received.append(message.text)
                assert not message.tokens  # the router's token ids are not passed on
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = parse_details(caught.value.trailing_metadata())
    assert details.reason == "BUDGET_EXHAUSTED"
    assert details.retry_after is not None and details.retry_after > 0
    assert "ended after the tokens already paid for" in (caught.value.details() or "")
    # Exactly the 12 tokens the budget pays for (one token a message here), charged.
    assert "".join(received) == " ".join(COUNTING.split()[:12])
    wait_until(lambda: _budget_used(redis_server, "streaming") == 12, "the cut stream's charge")
    # Spent: the next request of the key, on either router, is refused at admission.
    refused = _refusal(lambda: _generate(pair[1], _request("canned"), metadata))
    assert parse_details(refused.trailing_metadata()).reason == "BUDGET_EXHAUSTED"
    assert "it is spent" in (refused.details() or "")


def test_a_router_on_local_limits_cuts_a_stream_at_its_budget_too(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    budget = {"per_month": 7, "reserve_tokens": 2}
    metrics_port = free_port()
    config = _router_config(
        upstream,
        None,
        [keys.config("local-budget", token_budget=budget)],
        metrics_listen=f"127.0.0.1:{metrics_port}",
    )
    router = _start(folder, "local-budget-router", ROUTER, config)
    servers.append(router)
    received: list[str] = []
    request = pb.StreamGenerateRequest(model="counting", prompt="hi")
    with grpc.insecure_channel(router.address) as channel:
        stream = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            request, timeout=10, metadata=keys("local-budget")
        )
        with pytest.raises(grpc.RpcError) as caught:
            for message in stream:
                received.append(message.text)
    assert parse_details(caught.value.trailing_metadata()).metadata == {
        "limit": "token_budget.per_month"
    }
    assert "".join(received) == " ".join(COUNTING.split()[:7])
    cutoffs = value(
        scrape(metrics_port), "switchyard_router_budget_cutoffs_total", model="counting"
    )
    assert cutoffs == 1


# --- the response cache ------------------------------------------------------------------


def test_a_repeated_greedy_request_is_replayed_from_the_cache_by_another_router(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    request = _request("cached-shared", prompt="unary replay", temperature=0)
    before = _cached_entries(redis_server)
    first, first_headers = _generate(pair[0], request, keys("alice"))
    assert "x-switchyard-cache" not in first_headers
    wait_until(lambda: _cached_entries(redis_server) > before, "the answer in Redis")
    again, headers = _generate(pair[1], request, keys("bob"))  # shared scope: any key
    assert headers["x-switchyard-cache"] == "hit"
    assert again == first
    # Answered without an attempt: no model server was asked.
    hit = _wait_for_log(pair[1], "model=cached-shared ", "cache=hit ")
    assert "attempts=0 " in hit[-1]


def test_count_tokens_never_meets_the_cache_of_a_generate_with_the_same_bytes(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    # CountTokensRequest{model, prompt} serializes exactly like GenerateRequest{model,
    # prompt}: a cache keyed on bytes alone would answer the count with a generation.
    request = pb.GenerateRequest(model="cached-any", prompt="count these four words")
    before = _cached_entries(redis_server)
    _generate(pair[0], request, keys("alice"))
    wait_until(lambda: _cached_entries(redis_server) > before, "the answer in Redis")
    count = pb.CountTokensRequest(model="cached-any", prompt="count these four words")
    assert count.SerializeToString() == request.SerializeToString()
    with grpc.insecure_channel(pair[1].address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        counted, call = stub.CountTokens.with_call(count, timeout=10, metadata=keys("alice"))
    assert "x-switchyard-cache" not in _headers(call.initial_metadata())
    assert counted.prompt_tokens == 4  # the scripted backend counts words
    assert counted.model == "canned"


def test_a_repeated_stream_is_replayed_message_by_message(
    pair: tuple[ServerProcess, ServerProcess], keys: Keys
) -> None:
    request = _request("cached-stream", prompt="stream replay", seed=7)  # seeded: cacheable
    first, first_headers = _stream(pair[0], request, keys("alice"))
    assert "x-switchyard-cache" not in first_headers
    replays: list[list[pb.StreamGenerateResponse]] = []

    def replayed() -> bool:
        messages, headers = _stream(pair[1], request, keys("alice"))
        if headers.get("x-switchyard-cache") == "hit":
            replays.append(messages)
        return len(replays) == 2

    # Written in the background: a request may come before the write lands (a miss,
    # whose answer is stored again).
    wait_until(replayed, "two replayed streams")
    # The stored messages, as they were: the same text, in the same messages, with
    # the final one's usage.
    assert replays[0] == replays[1]
    assert "".join(m.text for m in replays[0]) == "".join(m.text for m in first) == COUNTING
    assert replays[0][-1].finish_reason == pb.FINISH_REASON_STOP
    assert replays[0][-1].usage == first[-1].usage
    assert replays[0][-1].usage.completion_tokens == 40


def test_cache_control_no_cache_bypasses_the_cache(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    request = _request("cached-shared", prompt="bypass me", temperature=0)
    _generate(pair[0], request, keys("alice"))
    wait_until(lambda: _generate(pair[0], request, keys("alice"))[1] != {}, "a cached answer")
    no_cache = (*keys("alice"), ("cache-control", "no-cache"))
    answer, headers = _generate(pair[0], request, no_cache)
    assert "x-switchyard-cache" not in headers
    assert answer.text == CANNED
    bypassed = _wait_for_log(pair[0], "model=cached-shared ", "cache=bypass ")
    assert "attempts=1 " in bypassed[-1]


def test_cache_control_no_store_neither_replays_nor_keeps_the_answer(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess
) -> None:
    """The memory cache stores before the answer returns, so the next request shows
    at once whether an answer was kept."""
    router = _start(folder, "no-store-router", ROUTER, _router_config(upstream, None, []))
    servers.append(router)
    request = _request("cached", prompt="never keep me", temperature=0)
    no_store = (("cache-control", "no-store"),)
    assert "x-switchyard-cache" not in _generate(router, request, no_store)[1]
    # Not kept: the plain request after it goes to the model server (and is kept) ...
    assert "x-switchyard-cache" not in _generate(router, request)[1]
    assert _generate(router, request)[1]["x-switchyard-cache"] == "hit"
    # ... and with an answer in the cache, no-store does not replay it either.
    answer, headers = _generate(router, request, no_store)
    assert "x-switchyard-cache" not in headers and answer.text == CANNED
    lines = _wait_for_log(router, "model=cached ", count=4)
    caches = [line.split(" cache=", 1)[1].split()[0] for line in lines]
    assert caches == ["bypass", "miss", "hit", "bypass"]


def test_a_cached_answer_expires_after_its_ttl(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    request = _request("cached-briefly", prompt="expire me", temperature=0)  # ttl 1 s
    _generate(pair[0], request, keys("alice"))
    with redis_server.client() as client:

        def stored() -> list[bytes]:
            return [k for k in client.keys("switchyard:cache:*") if 0 < client.pttl(k) <= 1000]

        wait_until(lambda: bool(stored()), "the short-lived answer in Redis")
        entry = stored()[0]
        wait_until(lambda: not client.exists(entry), "the answer to expire")
    _, headers = _generate(pair[1], request, keys("alice"))
    assert "x-switchyard-cache" not in headers


def test_requests_that_sample_are_not_cached(
    pair: tuple[ServerProcess, ServerProcess], keys: Keys
) -> None:
    request = _request("cached-shared", prompt="sampled")  # temperature unset, no seed
    for _ in range(2):
        _, headers = _generate(pair[0], request, keys("alice"))
        assert "x-switchyard-cache" not in headers
    _wait_for_log(pair[0], "model=cached-shared ", "cache=nondeterministic ", count=2)


def test_answers_cached_per_key_are_not_replayed_to_another_key(
    pair: tuple[ServerProcess, ServerProcess], keys: Keys
) -> None:
    request = _request("cached", prompt="mine", temperature=0)
    _generate(pair[0], request, keys("alice"))
    wait_until(lambda: bool(_generate(pair[0], request, keys("alice"))[1]), "alice's hit")
    _, headers = _generate(pair[0], request, keys("bob"))
    assert "x-switchyard-cache" not in headers  # bob never sees alice's answer
    # Keys with the same cache_scope share theirs.
    _generate(pair[0], request, keys("carol"))
    wait_until(lambda: bool(_generate(pair[1], request, keys("dave"))[1]), "a hit for dave")


def test_a_hit_costs_no_model_tokens(
    pair: tuple[ServerProcess, ServerProcess], redis_server: RedisServer, keys: Keys
) -> None:
    metadata = keys("cache-budget")
    request = _request("cached", prompt="free replay", temperature=0)
    _generate(pair[0], request, metadata)  # 2 + 6 tokens
    wait_until(lambda: _budget_used(redis_server, "cache-budget", "month") == 8, "the charge")
    wait_until(lambda: bool(_generate(pair[1], request, metadata)[1]), "a hit")
    _generate(pair[1], _request("canned", prompt="paid"), metadata)  # 1 + 6 more
    # 8 + 7, settled (the second request first reserves 1,024): a hit charged anything
    # would never let it come down to 15.
    wait_until(lambda: _budget_used(redis_server, "cache-budget", "month") == 15, "15 tokens")


def test_a_memory_cache_replays_and_counts_in_metrics(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess
) -> None:
    metrics_port = free_port()
    config = _router_config(upstream, None, [], metrics_listen=f"127.0.0.1:{metrics_port}")
    router = _start(folder, "memory-cache-router", ROUTER, config)
    servers.append(router)
    request = _request("cached", prompt="in memory", temperature=0)  # no auth: one scope
    first, _ = _generate(router, request)
    again, headers = _generate(router, request)  # stored before the first answer returned
    assert headers["x-switchyard-cache"] == "hit"
    assert again == first
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    samples = text.decode()
    assert 'switchyard_router_cache_lookups_total{model="cached",result="hit"} 1.0' in samples
    assert 'switchyard_router_cache_lookups_total{model="cached",result="miss"} 1.0' in samples
    assert "switchyard_router_cache_entries 1.0" in samples
    assert 'switchyard_router_cache_stores_total{model="cached"} 1.0' in samples
    assert value(scrape(metrics_port), "switchyard_router_cache_bytes") > 0


# --- when Redis goes away ----------------------------------------------------------------


def _wait_for_health(routers: tuple[ServerProcess, ...], status: str) -> None:
    for router in routers:
        wait_until(
            lambda router=router: health_status(router.address, REDIS_HEALTH) == status,  # type: ignore[misc]
            f"{router.name}: {REDIS_HEALTH} {status}",
        )


class _Load:
    """Callers sending requests without pause to each router, counting outcomes."""

    def __init__(self, routers: tuple[ServerProcess, ...], metadata: Metadata) -> None:
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send, args=(router, metadata), daemon=True)
            for router in routers
            for _ in range(2)
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, router: ServerProcess, metadata: Metadata) -> None:
        with grpc.insecure_channel(router.address) as channel:
            stub = pb_grpc.LLMServiceStub(channel)
            while not self._stop.is_set():
                try:
                    stub.Generate(_request("canned"), timeout=10, metadata=metadata)
                    with self._lock:
                        self.served += 1
                except grpc.RpcError as error:
                    with self._lock:
                        self.failures.append(f"{error.code().name}: {error.details()}")

    def wait_for_more(self, count: int) -> None:
        start = self.served
        wait_until(lambda: self.served >= start + count, f"{count} more answers")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def test_redis_killed_and_restarted_under_load_fails_no_request_and_limits_resume(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    redis = RedisServer(folder, "redis-chaos")
    try:
        metrics_port = free_port()
        key_configs = [
            keys.config("busy", requests_per_minute=1_000_000),
            keys.config("four-a-minute", requests_per_minute=4),
        ]
        config = _router_config(upstream, redis, key_configs, limits_backend="redis")
        routers = (
            _start(
                folder,
                "chaos-router-a",
                ROUTER,
                {**config, "metrics_listen": f"127.0.0.1:{metrics_port}"},
            ),
            _start(folder, "chaos-router-b", ROUTER, config),
        )
        servers.extend(routers)
        _wait_for_health(routers, "SERVING")
        load = _Load(routers, keys("busy"))
        try:
            load.wait_for_more(20)
            redis.kill()
            _wait_for_health(routers, "NOT_SERVING")
            load.wait_for_more(20)  # served on local limits meanwhile
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
            assert b"switchyard_router_redis_up 0.0" in metrics
            assert value(scrape(metrics_port), "switchyard_router_redis_errors_total") >= 1
            redis.start()  # an empty Redis on the same port
            _wait_for_health(routers, "SERVING")
            load.wait_for_more(20)
        finally:
            load.stop()
        assert load.failures == []
        for router in routers:
            log = router.log()
            assert f"Redis at 127.0.0.1:{redis.port} is unreachable" in log
            assert "serving on this router's own limits until it is back" in log
            assert f"Redis at 127.0.0.1:{redis.port} is reachable again" in log
        # Back to limits the fleet shares: 4 a minute between both routers.
        assert _outcomes(routers, keys("four-a-minute"), 8).count("OK") == 4
    finally:
        redis.stop()


def test_when_unreachable_refuse_fails_closed_for_keys_with_limits(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    redis = RedisServer(folder, "redis-closed")
    try:
        key_configs = [keys.config("guarded", requests_per_minute=1000), keys.config("open")]
        config = _router_config(
            upstream,
            redis,
            key_configs,
            limits_backend="redis",
            redis_settings={"when_unreachable": "refuse"},
        )
        router = _start(folder, "closed-router", ROUTER, config)
        servers.append(router)
        assert _generate(router, _request("canned"), keys("guarded"))[0].text == CANNED
        redis.kill()
        _wait_for_health((router,), "NOT_SERVING")
        refused = _refusal(lambda: _generate(router, _request("canned"), keys("guarded")))
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        details = parse_details(refused.trailing_metadata())
        assert details.reason == "LIMITS_UNAVAILABLE"
        assert details.retry_after is not None
        # A key without limits needs no Redis.
        assert _generate(router, _request("canned"), keys("open"))[0].text == CANNED
        redis.start()
        _wait_for_health((router,), "SERVING")
        assert _generate(router, _request("canned"), keys("guarded"))[0].text == CANNED
    finally:
        redis.stop()


def test_a_reload_moves_the_limits_to_redis_without_a_restart(
    folder: Path,
    servers: list[ServerProcess],
    upstream: ServerProcess,
    redis_server: RedisServer,
    keys: Keys,
) -> None:
    key_configs = [keys.config("reloaded", requests_per_minute=1000)]
    config = _router_config(upstream, None, key_configs)
    path = write_config(folder / "reloading-router.yaml", config)
    router = ServerProcess("reloading-router", ROUTER, path, free_port(), folder)
    servers.append(router)
    router.wait_serving()
    wait_healthy(router, (("authorization", f"Bearer {_OBSERVER}"),))
    assert health_status(router.address, REDIS_HEALTH) == "NOT_FOUND"  # no Redis yet
    write_config(path, _router_config(upstream, redis_server, key_configs, limits_backend="redis"))
    wait_until(lambda: health_status(router.address, REDIS_HEALTH) == "SERVING", "the reload")
    _generate(router, _request("canned"), keys("reloaded"))
    with redis_server.client() as client:
        assert client.exists("switchyard:requests:reloaded")  # counted in Redis now


def test_limits_are_shared_over_tls_with_a_password_from_a_file(
    folder: Path, servers: list[ServerProcess], upstream: ServerProcess, keys: Keys
) -> None:
    tls = folder / "redis-tls"
    tls.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tls / "ca.crt"))
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(tls / "tls.crt"))
    leaf.private_key_pem.write_to_path(str(tls / "tls.key"))
    password = secrets.token_urlsafe(16)
    secretscan.register(password)  # never in a log
    (folder / "redis-password").write_text(f"{password}\n")  # as a Secret mounts it
    redis = RedisServer(folder, "redis-tls", tls=tls, password=password)
    try:
        config = _router_config(
            upstream,
            redis,
            [keys.config("three-a-minute", requests_per_minute=3)],
            redis_settings={
                "password_file": str(folder / "redis-password"),
                "tls": {"ca_file": str(tls / "ca.crt")},
            },
            limits_backend="redis",
        )
        assert config["redis"]["url"].startswith("rediss://")
        routers = (
            _start(folder, "tls-router-a", ROUTER, config),
            _start(folder, "tls-router-b", ROUTER, config),
        )
        servers.extend(routers)
        _wait_for_health(routers, "SERVING")
        assert _outcomes(routers, keys("three-a-minute"), 6).count("OK") == 3
    finally:
        redis.stop()
