"""The router loses no request it could serve: failover, ejection, priorities, weights."""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import Fleet, endpoints, wait_for_state
from processes import ServerProcess

from switchyard import AsyncClient, Client, InvalidArgumentError, UnavailableError
from switchyard.v1 import router_admin_pb2 as admin_pb

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture
def fleet(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    group = Fleet(workdir, request.node.name.replace("[", "-").replace("]", ""))
    yield group
    group.stop()


def _cluster(*servers: ServerProcess) -> dict[str, list[str]]:
    return {"endpoints": [s.address for s in servers]}


def _route(model: str, *targets: dict[str, object], resume: bool = False) -> dict[str, object]:
    return {"model": model, "targets": list(targets), "resume": resume}


async def test_kill_9_of_one_replica_fails_no_unary_request(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 10}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    results: list[str] = []
    async with AsyncClient(router.address, max_retries=0, timeout=30) as client:

        async def worker(count: int) -> None:
            for _ in range(count):
                results.append((await client.generate("m", "x")).text)

        batch = asyncio.gather(*(worker(10) for _ in range(6)))
        while len(results) < 10:  # noqa: ASYNC110 - waiting on the workers' progress
            await asyncio.sleep(0.01)
        a.process.kill()  # kill -9 while requests run on it
        await batch
    assert results == [WORDS] * 60


async def test_kill_9_mid_stream_without_resume_ends_streams_cleanly(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 100}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    outcomes: list[str] = []
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:

        async def consume() -> None:
            text = ""
            try:
                async for chunk in client.stream("m", "x"):
                    text += chunk.text
            except UnavailableError as error:
                assert "does not resume" in error.message
                outcomes.append("unavailable")
                return
            assert text == WORDS
            outcomes.append("complete")

        streams = [asyncio.create_task(consume()) for _ in range(8)]
        await asyncio.sleep(0.35)  # every stream has sent a few words
        a.process.kill()
        await asyncio.gather(*streams)
    assert len(outcomes) == 8
    assert "unavailable" in outcomes  # the ones on the killed replica
    assert "complete" in outcomes


async def test_kill_9_mid_stream_with_resume_completes_every_stream(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 100}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"pool": _cluster(a, b)},
            "routes": [_route("m", {"cluster": "pool"}, resume=True)],
        }
    )
    finals = []
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:

        async def consume() -> None:
            chunks = [chunk async for chunk in client.stream("m", "x")]
            assert "".join(c.text for c in chunks) == WORDS
            finals.append(chunks[-1])

        streams = [asyncio.create_task(consume()) for _ in range(8)]
        await asyncio.sleep(0.35)
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


def test_lower_priority_is_used_only_when_the_first_has_no_healthy_endpoint(fleet: Fleet) -> None:
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

    def attempts() -> int:
        return sum(s.log().count("request method=Generate") for s in (a, b))

    deadline = time.monotonic() + 5
    while attempts() == 0:  # a server logs its request just after answering
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # room for a retry, had there been one
    assert attempts() == 1


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
    [flaky_view] = [e for e in endpoints(router) if e.address == flaky.address]
    assert flaky_view.ejections >= 1
    assert "3 consecutive failures" in flaky_view.ejection_reason
    # Ejected after its third failure: most requests never tried it.
    time.sleep(0.3)  # a server logs its request just after answering
    assert 3 <= flaky.log().count("request method=Generate") < 20
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
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {"clusters": {"pool": _cluster(a, b)}, "routes": [_route("m", {"cluster": "pool"})]}
    )
    async with AsyncClient(router.address, max_retries=0, timeout=30) as client:
        requests = [asyncio.create_task(client.generate("m", "x")) for _ in range(40)]
        await asyncio.sleep(0.1)  # all 40 are in flight, about half on each replica
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
