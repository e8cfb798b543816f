"""The router loses no request it could serve: failover, ejection, priorities, weights."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from fleet import (
    Fleet,
    access_lines,
    endpoint_view,
    endpoints,
    in_flight,
    shown_endpoints,
    wait_access_lines,
    wait_for_state,
    wait_healthy,
    wait_in_flight,
)
from processes import ServerProcess, wait_until
from scrape import scrape, value

from switchyard import (
    AsyncClient,
    Client,
    InvalidArgumentError,
    StreamChunk,
    SwitchyardError,
    UnavailableError,
)
from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

WORDS = "one two three four five six seven eight nine ten"


def _cluster(*servers: ServerProcess) -> dict[str, list[str]]:
    return {"endpoints": [s.address for s in servers]}


def _route(model: str, *targets: dict[str, object], resume: bool = False) -> dict[str, object]:
    return {"model": model, "targets": list(targets), "resume": resume}


async def _until(condition: Callable[[], object], what: str, timeout: float = 15) -> None:
    """Waits (without blocking the event loop) until ``condition`` holds."""
    await asyncio.to_thread(wait_until, condition, what, timeout)


async def test_kill_9_of_one_replica_fails_no_unary_request(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 10}]
    a, b = fleet.scripted("a", models, metrics=True), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    results: list[str] = []
    async with AsyncClient(router.address, max_retries=0, timeout=30) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                results.append((await client.generate("m", "x")).text)

        batch = asyncio.gather(*(worker(10) for _ in range(6)))
        await asyncio.to_thread(wait_in_flight, a, "m")  # a itself is generating some
        a.process.kill()  # kill -9 while requests run on it
        await batch
    assert results == [WORDS] * 60


async def test_kill_9_mid_stream_without_resume_ends_streams_cleanly(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 100}]
    a, b = fleet.scripted("a", models, metrics=True), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    outcomes: list[str] = []
    started: list[int] = []
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:

        async def consume() -> None:
            text = ""
            try:
                async for chunk in client.stream("m", "x"):
                    if not text:
                        started.append(1)
                    text += chunk.text
            except UnavailableError as error:
                assert "does not resume" in error.message
                outcomes.append("unavailable")
                return
            assert text == WORDS
            outcomes.append("complete")

        streams = [asyncio.create_task(consume()) for _ in range(8)]
        # Every stream has its first words, and some of them come from a.
        await _until(lambda: len(started) == 8, "every stream's first message")
        await asyncio.to_thread(wait_in_flight, a, "m")
        a.process.kill()
        await asyncio.gather(*streams)
    assert len(outcomes) == 8
    assert "unavailable" in outcomes  # the ones on the killed replica
    assert "complete" in outcomes


async def test_kill_9_mid_stream_with_resume_completes_every_stream(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 100}]
    a, b = fleet.scripted("a", models, metrics=True), fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"pool": _cluster(a, b)},
            "routes": [_route("m", {"cluster": "pool"}, resume=True)],
        }
    )
    finals = []
    started: list[int] = []
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:

        async def consume() -> None:
            chunks: list[StreamChunk] = []
            async for chunk in client.stream("m", "x"):
                if not chunks:
                    started.append(1)
                chunks.append(chunk)
            assert "".join(c.text for c in chunks) == WORDS
            finals.append(chunks[-1])

        streams = [asyncio.create_task(consume()) for _ in range(8)]
        await _until(lambda: len(started) == 8, "every stream's first message")
        await asyncio.to_thread(wait_in_flight, a, "m")
        a.process.kill()
        await asyncio.gather(*streams)
    assert len(finals) == 8
    assert any(f.resumes == 1 for f in finals)  # those that were on the killed replica
    assert all(f.usage is not None and f.usage.completion_tokens == 10 for f in finals)


def test_sigstop_replica_is_skipped_after_the_per_try_timeout_and_returns_after_sigcont(
    fleet: Fleet,
) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a"}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b"}])
    router = fleet.router(
        {
            "clusters": {
                "pool": {
                    **_cluster(a, b),
                    "outlier_detection": {"consecutive_failures": 2, "base_ejection_seconds": 1},
                }
            },
            "routes": [_route("m", {"cluster": "pool"})],
            "retry": {"num_retries": 2, "per_try_timeout_seconds": 0.3},
        }
    )
    a.signal(signal.SIGSTOP)
    try:
        with Client(router.address, max_retries=0, timeout=10) as client:
            replies = [client.generate("m", "x").text for _ in range(12)]
        assert set(replies) == {"from-b"}  # every request served, none lost to the hung one
        wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_EJECTED, timeout=5)
    finally:
        a.signal(signal.SIGCONT)
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    with Client(router.address, max_retries=0, timeout=10) as client:
        deadline = time.monotonic() + 10
        while client.generate("m", "x").text != "from-a":
            assert time.monotonic() < deadline, "the resumed replica never got traffic again"


def test_a_not_serving_replica_gets_no_requests(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a"}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b " * 20, "token_delay_ms": 200}])
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    # SIGTERM with a stream in flight: b drains, reporting NOT_SERVING meanwhile.
    with Client(b.address, max_retries=0) as direct:
        b_stream = direct.stream("m", "x")
        next(b_stream)
        b.signal(signal.SIGTERM)
        wait_for_state(router, b.address, admin_pb.ENDPOINT_STATE_NOT_SERVING)
        with Client(router.address, max_retries=0) as client:
            replies = collections.Counter(client.generate("m", "x").text for _ in range(30))
        b_stream.close()
    assert replies == {"from-a": 30}


def test_all_replicas_down_is_unavailable_naming_the_route_then_recovers(
    fleet: Fleet, workdir: Path
) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "back"}])
    router = fleet.router(
        {"clusters": {"pool": _cluster(a)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    a.process.kill()
    a.process.wait()
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_UNREACHABLE)
    with Client(router.address, max_retries=0, timeout=10) as client:
        with pytest.raises(UnavailableError) as caught:
            client.generate("m", "x")
        assert "'m'" in caught.value.message
        assert a.address in caught.value.message
        assert caught.value.reason == "NO_HEALTHY_ENDPOINT"
        # The replica comes back on the same address: the router notices by itself.
        port = int(a.address.rsplit(":", 1)[1])
        from conftest import write_config

        config = write_config(
            workdir / f"{fleet.name}-revived.yaml",
            {"backend": {"kind": "scripted", "models": [{"id": "m", "reply": "back"}]}},
        )
        revived = ServerProcess(
            f"{fleet.name}-revived", "switchyard_modelserver", config, port, workdir
        )
        fleet.servers.append(revived)
        revived.wait_serving()
        wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)
        assert client.generate("m", "x").text == "back"


def test_the_fallback_priority_takes_over_when_the_first_has_no_healthy_endpoint(
    fleet: Fleet,
) -> None:
    primary = fleet.scripted("primary", [{"id": "local-model", "reply": "from-primary"}])
    fallback = fleet.scripted("fallback", [{"id": "cloud-model", "reply": "from-fallback"}])
    router = fleet.router(
        {
            "clusters": {"cpu": _cluster(primary), "cloud": _cluster(fallback)},
            "routes": [
                _route(
                    "assistant",
                    {"cluster": "cpu", "model": "local-model", "priority": 0},
                    {"cluster": "cloud", "model": "cloud-model", "priority": 1},
                )
            ],
        }
    )
    with Client(router.address, max_retries=0) as client:
        assert {client.generate("assistant", "x").text for _ in range(20)} == {"from-primary"}
        primary.process.kill()
        wait_for_state(router, primary.address, admin_pb.ENDPOINT_STATE_UNREACHABLE)
        result = client.generate("assistant", "x")
        assert (result.text, result.model) == ("from-fallback", "cloud-model")


def _priorities(router: ServerProcess) -> list[tuple[int, int, bool]]:
    """The router's view of its route's priorities: (healthy endpoints, load, panic)."""
    with grpc.insecure_channel(router.address) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        response = stub.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=5)
    return [(p.healthy_endpoints, p.priority_load, p.panic) for p in response.priorities]


def _eject_while_stopped(router: ServerProcess, client: Client, *servers: ServerProcess) -> None:
    """Ejects working replicas, one at a time: stops one (SIGSTOP), sends requests until
    the per-try timeout has ejected it, and lets it go on (SIGCONT): it answers again,
    and stays ejected for its back-off.

    A replica stays stopped for less than the router's keepalive limit (10 s + 5 s): one
    stopped for longer loses its connection (UNREACHABLE, no request goes there, so it is
    never ejected). Should that happen on a slow machine, it is let go, reconnects, and
    is stopped again."""
    for server in servers:
        deadline = time.monotonic() + 90
        while not _stopped_until_ejected(router, client, server):
            assert time.monotonic() < deadline, f"{server.address} was never ejected"
            wait_for_state(router, server.address, admin_pb.ENDPOINT_STATE_HEALTHY)


def _stopped_until_ejected(router: ServerProcess, client: Client, server: ServerProcess) -> bool:
    server.signal(signal.SIGSTOP)
    try:
        stop_by = time.monotonic() + 9
        while time.monotonic() < stop_by:
            state = endpoint_view(router, server.address).state
            if state == admin_pb.ENDPOINT_STATE_EJECTED:
                return True
            if state != admin_pb.ENDPOINT_STATE_HEALTHY:
                return False  # its connection is gone: no request will reach it
            with contextlib.suppress(SwitchyardError):  # every attempt on a stopped one
                client.generate("m", "x")
        return False
    finally:
        server.signal(signal.SIGCONT)


def test_a_mostly_ejected_priority_spills_to_the_next_by_health_and_panics_only_when_all_do(
    fleet: Fleet,
) -> None:
    near = [fleet.scripted(f"near{i}", [{"id": "m", "reply": f"near-{i}"}]) for i in range(4)]
    far = [fleet.scripted(f"far{i}", [{"id": "m", "reply": f"far-{i}"}]) for i in range(2)]
    cluster = {
        # One failure ejects, for longer than the test; a reconnect does not end it.
        "outlier_detection": {
            "consecutive_failures": 1,
            "base_ejection_seconds": 600,
            "max_ejection_seconds": 600,
            "max_ejection_percent": 100,
            "successful_active_health_check_uneject_host": False,
        },
    }
    router = fleet.router(
        {
            "clusters": {
                "near": {**_cluster(*near), **cluster},
                "far": {**_cluster(*far), **cluster},
            },
            "routes": [_route("m", {"cluster": "near"}, {"cluster": "far", "priority": 1})],
            "retry": {"num_retries": 2, "per_try_timeout_seconds": 2},
        }
    )
    wait_healthy(router)
    with Client(router.address, max_retries=0, timeout=30) as client:
        _eject_while_stopped(router, client, *near[1:])
        # One of four healthy at P=0: health 1.4 x 25% = 35. P=1 makes up the rest, so
        # nothing panics and the three ejected (working again) get nothing.
        wait_until(
            lambda: _priorities(router) == [(1, 35, False), (2, 65, False)],
            "P=0 at 35% and P=1 at 65%, neither in panic",
        )
        replies = collections.Counter(client.generate("m", "x").text for _ in range(300))
        assert set(replies) <= {"near-0", "far-0", "far-1"}
        # 105 expected at near-0; the standard deviation is about 8.3.
        assert 75 <= replies["near-0"] <= 135
        assert replies["far-0"] > 0 and replies["far-1"] > 0
        shown = shown_endpoints(router)
        assert "route m priority 0: 1 of 4 healthy (health 35%): takes 35% of requests" in shown
        assert "route m priority 1: 2 of 2 healthy (health 100%): takes 65% of requests" in shown
        # Everything ejected: total panic, each connected replica an equal share.
        _eject_while_stopped(router, client, near[0], *far)
        # (A replica stopped for long may have lost its health stream: it is connected
        # again, for the router, once the stream is back.)
        wait_until(
            lambda: _priorities(router) == [(0, 67, True), (0, 33, True)],
            "total panic over all six connected replicas",
        )
        replies = collections.Counter(client.generate("m", "x").text for _ in range(120))
    assert set(replies) == {f"near-{i}" for i in range(4)} | {"far-0", "far-1"}
    assert sum(replies.values()) == 120  # every request served


def test_weights_split_traffic(fleet: Fleet) -> None:
    stable = fleet.scripted("stable", [{"id": "m", "reply": "stable"}])
    canary = fleet.scripted("canary", [{"id": "m", "reply": "canary"}])
    router = fleet.router(
        {
            "clusters": {"stable": _cluster(stable), "canary": _cluster(canary)},
            "routes": [
                _route("m", {"cluster": "stable", "weight": 3}, {"cluster": "canary", "weight": 1})
            ],
        }
    )
    with Client(router.address, max_retries=0) as client:
        counts = collections.Counter(client.generate("m", "x").text for _ in range(400))
    # Expected 300/100; with 400 draws the standard deviation is about 8.7.
    assert 250 <= counts["stable"] <= 350
    assert counts["stable"] + counts["canary"] == 400


def test_a_round_robin_route_takes_two_replicas_in_turn(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a"}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b"}])
    route = {**_route("m", {"cluster": "pool"}), "policy": "round_robin"}
    router = fleet.router({"clusters": {"pool": _cluster(a, b)}, "routes": [route]})
    for server in (a, b):
        wait_for_state(router, server.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    with Client(router.address, max_retries=0) as client:
        replies = [client.generate("m", "x").text for _ in range(30)]
        # Streams ask the same picker: the turns go on.
        replies += ["".join(c.text for c in client.stream("m", "x")) for _ in range(10)]
    assert collections.Counter(replies) == {"from-a": 20, "from-b": 20}
    assert all(x != y for x, y in itertools.pairwise(replies))  # each in turn, always


def test_invalid_argument_is_never_retried(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m"}])
    b = fleet.scripted("b", [{"id": "m"}])
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    with Client(router.address, max_retries=0) as client, pytest.raises(InvalidArgumentError):
        client.generate("m", "x", temperature=-1)
    # The router retries before it answers: its access line counts every attempt.
    [line] = wait_access_lines(router, 1)
    assert (line["code"], line["attempts"]) == ("INVALID_ARGUMENT", "1")
    wait_until(
        lambda: sum(len(access_lines(s)) for s in (a, b)) >= 1, "the model server's access line"
    )
    assert sum(len(access_lines(s)) for s in (a, b)) == 1


def test_a_flaky_replica_is_ejected_and_requests_succeed(fleet: Fleet) -> None:
    flaky = fleet.scripted("flaky", [{"id": "m", "reply": "x", "fail_after_tokens": 0}])
    good = fleet.scripted("good", [{"id": "m", "reply": "good"}])
    # The flaky replica is everyone's first choice (priority 0) while it is not ejected.
    router = fleet.router(
        {
            "clusters": {"first": _cluster(flaky), "second": _cluster(good)},
            "routes": [_route("m", {"cluster": "first"}, {"cluster": "second", "priority": 1})],
        }
    )
    with Client(router.address, max_retries=0) as client:
        assert {client.generate("m", "x").text for _ in range(20)} == {"good"}
    flaky_view = endpoint_view(router, flaky.address)
    assert flaky_view.ejections >= 1
    assert "3 consecutive failures" in flaky_view.ejection_reason
    # Ejected after its third failure: most requests never tried it. Each request
    # ended on the good replica, so every attempt past one per request was flaky's.
    lines = wait_access_lines(router, 20)
    tried_flaky = sum(int(line["attempts"]) for line in lines) - 20
    assert 3 <= tried_flaky < 20
    wait_until(lambda: len(access_lines(flaky)) >= tried_flaky, "flaky's access lines")
    assert len(access_lines(flaky)) == tried_flaky
    assert all(e.outstanding_requests == 0 for e in endpoints(router))


def test_a_stream_that_fails_before_its_first_token_is_retried_transparently(
    fleet: Fleet,
) -> None:
    broken = fleet.scripted("broken", [{"id": "m", "reply": WORDS, "fail_after_tokens": 0}])
    good = fleet.scripted("good", [{"id": "m", "reply": WORDS}])
    # The broken replica is the first choice (priority 0) until it is ejected.
    router = fleet.router(
        {
            "clusters": {"first": _cluster(broken), "second": _cluster(good)},
            "routes": [_route("m", {"cluster": "first"}, {"cluster": "second", "priority": 1})],
        }
    )
    with Client(router.address, max_retries=0) as client:
        for _ in range(5):
            chunks = list(client.stream("m", "x"))
            assert "".join(c.text for c in chunks) == WORDS
            assert chunks[-1].resumes == 0  # a retry, not a resume: nothing had been sent
    deadline = time.monotonic() + 5
    while broken.log().count("code=UNAVAILABLE") < 3:  # three failed first attempts, then ejected
        assert time.monotonic() < deadline, broken.log()
        time.sleep(0.02)


def test_a_hung_replica_is_dropped_by_keepalive_without_a_per_try_timeout(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a"}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b"}])
    cluster = {**_cluster(a, b), "keepalive_seconds": 1, "keepalive_timeout_seconds": 1}
    router = fleet.router(
        {"clusters": {"pool": cluster}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    a.signal(signal.SIGSTOP)
    try:
        with Client(router.address, max_retries=0, timeout=20) as client:
            # Requests sent to the hung replica fail when its pings go unanswered
            # and are retried on the other one; none is lost.
            replies = [client.generate("m", "x").text for _ in range(6)]
        assert set(replies) == {"from-b"}
        wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_UNREACHABLE, timeout=10)
    finally:
        a.signal(signal.SIGCONT)
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)


async def test_kill_9_under_heavy_concurrency_fails_no_unary_request(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 20}]
    a, b = fleet.scripted("a", models, metrics=True), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    async with AsyncClient(router.address, max_retries=0, timeout=30) as client:
        requests = [asyncio.create_task(client.generate("m", "x")) for _ in range(40)]
        # Many in flight at a itself (each takes 200 ms at least; about half go there).
        await _until(lambda: in_flight(a, "m") >= 5, "5 requests in flight on a")
        a.process.kill()
        results = await asyncio.gather(*requests)
    assert [r.text for r in results] == [WORDS] * 40


async def test_resume_keeps_text_held_back_for_a_possible_stop_sequence(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 150}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"first": _cluster(a), "second": _cluster(b)},
            "routes": [
                _route("m", {"cluster": "first"}, {"cluster": "second", "priority": 1}, resume=True)
            ],
        }
    )
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:
        # " three five" never matches, but " three" is held back until " four" arrives.
        stream = client.stream("m", "x", stop=[" three five"])
        text = ""
        async for chunk in stream:
            text += chunk.text
            if text.endswith("two"):
                a.process.kill()  # " three" is generated on a and held back when it dies
        final = chunk
    assert text == WORDS
    assert final.resumes == 1


def test_the_retry_budget_throttles_retries_under_a_failing_fleet(fleet: Fleet) -> None:
    failing = [{"id": "m", "reply": "never", "fail_after_tokens": 0}]  # UNAVAILABLE at once
    servers = [fleet.scripted(label, failing) for label in ("a", "b", "c")]
    router = fleet.router(
        {
            # No ejection: every endpoint stays in rotation, failing.
            "clusters": {
                "pool": {**_cluster(*servers), "outlier_detection": {"consecutive_failures": 1000}}
            },
            "routes": [_route("m", {"cluster": "pool"})],
            "retry": {"num_retries": 2, "budget_max_tokens": 10, "budget_token_ratio": 0.1},
        },
        metrics=True,
    )
    assert router.metrics_address
    before = value(scrape(router.metrics_address), "switchyard_router_retries_total", model="m")
    with Client(router.address, max_retries=0) as client:
        for _ in range(12):
            with pytest.raises(UnavailableError):
                client.generate("m", "x")
    # 10 tokens, one per failed attempt, retries only while more than 5 remain:
    # the first request gets both its retries, the second one, the rest none.
    attempts = [int(line["attempts"]) for line in wait_access_lines(router, 12)]
    assert attempts == [3, 2] + [1] * 10
    after = value(scrape(router.metrics_address), "switchyard_router_retries_total", model="m")
    assert after - before == 3
    wait_until(
        lambda: sum(len(access_lines(s)) for s in servers) >= 15, "15 attempts at the servers"
    )
    assert sum(len(access_lines(s)) for s in servers) == 15  # without a budget: 36


def test_a_full_queue_is_retried_elsewhere_and_never_ejects_the_endpoint(fleet: Fleet) -> None:
    # One request at a time and no queue: a second one is RESOURCE_EXHAUSTED (QUEUE_FULL).
    busy_model = {"id": "m", "reply": WORDS, "token_delay_ms": 300, "concurrency": 1}
    full = fleet.scripted("full", [busy_model], metrics=True, max_queue_per_model=0)
    spare = fleet.scripted("spare", [{"id": "m", "reply": "from-spare"}])
    router = fleet.router(
        {
            "clusters": {
                "first": {**_cluster(full), "outlier_detection": {"consecutive_failures": 2}},
                "second": _cluster(spare),
            },
            "routes": [_route("m", {"cluster": "first"}, {"cluster": "second", "priority": 1})],
        }
    )
    with Client(full.address, max_retries=0) as direct:
        holder = direct.stream("m", "x")
        next(holder)  # holds full's only slot
        wait_in_flight(full, "m")
        with Client(router.address, max_retries=0) as client:
            replies = [client.generate("m", "x").text for _ in range(5)]
        holder.close()
    assert replies == ["from-spare"] * 5
    # Each went to full first (priority 0), was refused as overload, and went on.
    lines = wait_access_lines(router, 5)
    assert [line["attempts"] for line in lines] == ["2"] * 5
    wait_until(
        lambda: sum(line["code"] == "RESOURCE_EXHAUSTED" for line in access_lines(full)) >= 5,
        "full's five refusals",
    )
    view = endpoint_view(router, full.address)
    assert view.state == admin_pb.ENDPOINT_STATE_HEALTHY  # overload is not failure
    assert (view.ejections, view.consecutive_failures) == (0, 0)
    wait_until(lambda: in_flight(full, "m") == 0, "full's slot freed")
    with Client(router.address, max_retries=0) as client:
        assert client.generate("m", "x").text == WORDS  # full serves again at once


def test_no_healthy_endpoint_is_unavailable_with_retry_info(fleet: Fleet) -> None:
    # A model server still loading its model: known, but NOT_SERVING.
    loading = fleet.modelserver(
        "loading",
        {"backend": {"kind": "scripted", "models": [{"id": "m", "load_delay_ms": 600_000}]}},
        wait=False,
    )
    router = fleet.router(
        {"clusters": {"pool": _cluster(loading)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    wait_for_state(router, loading.address, admin_pb.ENDPOINT_STATE_NOT_SERVING)
    with grpc.insecure_channel(router.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.LLMServiceStub(channel).Generate(pb.GenerateRequest(model="m", prompt="x"))
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = parse_details(error.trailing_metadata())
    assert details.reason == "NO_HEALTHY_ENDPOINT"
    assert details.retry_after is not None and details.retry_after > 0
    assert loading.address in (error.details() or "")  # names every endpoint's state
    with Client(router.address, max_retries=0) as client, pytest.raises(UnavailableError) as sdk:
        client.generate("m", "x")
    assert sdk.value.retry_after == details.retry_after
