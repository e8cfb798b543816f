"""No outage while replicas restart: un-ejection on health, fast reconnect, the
ejection cap and panic routing, against real model servers restarted on their ports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import socket
import threading
import time
from typing import Any

import pytest
from conftest import write_config
from fleet import (
    Fleet,
    access_lines,
    endpoints,
    shown_endpoints,
    wait_for_state,
    wait_healthy,
    wait_in_flight,
)
from processes import ServerProcess, free_port
from scrape import scrape, value

from switchyard import APIError, AsyncClient, Client, UnavailableError
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

WORDS = " ".join(f"w{i}" for i in range(12))


class Replica:
    """A scripted model server that can be restarted on its address, as a pod's
    container is: each incarnation has its own log."""

    def __init__(self, fleet: Fleet, label: str, models: list[dict[str, Any]]) -> None:
        self.fleet = fleet
        self.label = label
        self.port = free_port()
        self.incarnations = 0
        self.process = self.start(models)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, models: list[dict[str, Any]]) -> ServerProcess:
        """A new incarnation on the same port (the previous one must have exited)."""
        self.incarnations += 1
        name = f"{self.fleet.name}-{self.label}-{self.incarnations}"
        config = write_config(
            self.fleet.workdir / f"{name}.yaml",
            {"backend": {"kind": "scripted", "models": models}},
        )
        server = ServerProcess(
            name, "switchyard_modelserver", config, self.port, self.fleet.workdir
        )
        self.fleet.servers.append(server)
        server.wait_serving()
        self.process = server
        return server

    def stop(self, how: signal.Signals) -> None:
        """kill -9, or SIGTERM (the model server drains first); waits for the exit."""
        self.process.signal(how)
        self.process.process.wait(30)


def _cluster(*replicas: Replica, **settings: object) -> dict[str, object]:
    return {"endpoints": [r.address for r in replicas], **settings}


def _admin(router: ServerProcess) -> admin_pb.ListEndpointsResponse:
    import grpc

    with grpc.insecure_channel(router.address) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        return stub.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=5)


@pytest.mark.parametrize(
    ("pattern", "replicas"), [("rolling", 2), ("rolling", 3), ("crash_loop", 2)]
)
async def test_restarting_replicas_under_load_fails_no_request(
    fleet: Fleet, pattern: str, replicas: int
) -> None:
    """``rolling``: each replica in turn, as a rolling update; ``crash_loop``: the same
    pod again and again, killed as soon as it serves, next to a healthy one."""
    models = [{"id": "echo", "token_delay_ms": 5}]
    pool = [Replica(fleet, f"r{i}", models) for i in range(replicas)]
    router = fleet.router(
        {
            "clusters": {"pool": _cluster(*pool)},
            "routes": [{"model": "echo", "resume": True, "targets": [{"cluster": "pool"}]}],
        }
    )
    failures: list[str] = []
    answered = 0
    stop = asyncio.Event()

    async def caller(index: int, client: AsyncClient) -> None:
        nonlocal answered
        for sequence in itertools.count():
            if stop.is_set():
                return
            prompt = f"caller{index} request{sequence} {WORDS}"
            try:
                if index % 2:
                    text = "".join([c.text async for c in client.stream("echo", prompt)])
                else:
                    text = (await client.generate("echo", prompt)).text
            except APIError as error:
                failures.append(f"{type(error).__name__}: {error.message}")
                continue
            if text != prompt:
                failures.append(f"caller {index}: {text!r} is not {prompt!r}")
            answered += 1

    async def progress(count: int) -> None:
        """Waits until ``count`` more requests were answered: load runs across restarts."""
        target = answered + count
        while answered < target and not failures:  # noqa: ASYNC110 - the callers' progress
            await asyncio.sleep(0.01)

    async def served(replica: Replica, count: int) -> None:
        """Waits until the replica's current incarnation answered ``count`` requests:
        the router sends it traffic again (with more in flight when it dies next)."""
        while len(access_lines(replica.process)) < count and not failures:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    turns = 4 if pattern == "rolling" else 6
    # Callers never retry: the router alone keeps them served.
    async with AsyncClient(router.address, max_retries=0, timeout=30) as client:
        load = [asyncio.create_task(caller(i, client)) for i in range(16)]
        await progress(50)
        # kill -9 and SIGTERM in turn; the next restart only once the router has the
        # previous replica back in rotation and serving.
        for turn, how in zip(range(turns), itertools.cycle((signal.SIGKILL, signal.SIGTERM))):
            replica = pool[turn % replicas] if pattern == "rolling" else pool[0]
            await asyncio.to_thread(replica.stop, how)
            await asyncio.to_thread(replica.start, models)
            await asyncio.to_thread(
                wait_for_state, router, replica.address, admin_pb.ENDPOINT_STATE_HEALTHY
            )
            await served(replica, 5)
            if pattern == "rolling":
                await progress(50)
        await progress(50)
        stop.set()
        await asyncio.gather(*load)
    assert failures == []
    assert answered >= 250


def test_a_restarted_replica_takes_requests_once_healthy_before_its_ejection_ends(
    fleet: Fleet,
) -> None:
    # Its first incarnation fails every request: outlier detection ejects it for a minute.
    a = Replica(fleet, "a", [{"id": "m", "reply": "from-a", "fail_after_tokens": 0}])
    b = Replica(fleet, "b", [{"id": "m", "reply": "from-b"}])
    router = fleet.router(
        {
            "clusters": {
                "pool": _cluster(
                    a, b, outlier_detection={"consecutive_failures": 1, "base_ejection_seconds": 60}
                )
            },
            "routes": [{"model": "m", "policy": "round_robin", "targets": [{"cluster": "pool"}]}],
        }
    )
    with Client(router.address, max_retries=0, timeout=10) as client:
        assert {client.generate("m", "x").text for _ in range(2)} == {"from-b"}  # a failed over
    [view] = [e for e in endpoints(router) if e.address == a.address]
    read_at = time.monotonic()
    assert view.state == admin_pb.ENDPOINT_STATE_EJECTED
    back_off_ends = read_at + view.ejected_for.seconds  # about a minute from now
    # A restart fixes it: the new incarnation says SERVING on a new health stream.
    a.stop(signal.SIGKILL)
    a.start([{"id": "m", "reply": "from-a"}])
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    with Client(router.address, max_retries=0, timeout=10) as client:
        replies = {client.generate("m", "x").text for _ in range(2)}  # round robin: one each
    assert time.monotonic() < back_off_ends  # all of this happened inside its back-off
    assert replies == {"from-a", "from-b"}
    [view] = [e for e in endpoints(router) if e.address == a.address]
    assert view.ejections == 1  # the multiplier stays: if it fails again soon, it pays double


def test_every_endpoint_ejected_but_connected_still_serves_in_panic(fleet: Fleet) -> None:
    a = Replica(fleet, "a", [{"id": "m", "reply": "ok"}])
    b = Replica(fleet, "b", [{"id": "m", "reply": "ok"}])
    metrics_port = free_port()
    outlier = {"consecutive_failures": 1, "base_ejection_seconds": 60, "max_ejection_percent": 100}
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "clusters": {"pool": _cluster(a, b, outlier_detection=outlier)},
            "routes": [
                {"model": "m", "targets": [{"cluster": "pool"}]},  # panics below 50% healthy
                {
                    "model": "strict",
                    "healthy_panic_threshold": 0,  # never panics
                    "targets": [{"cluster": "pool", "model": "m"}],
                },
            ],
            "retry": {"num_retries": 1, "per_try_timeout_seconds": 0.3},
        }
    )
    # Both freeze (a long pause, an overloaded node): every attempt times out and
    # ejects its endpoint. Their health streams stay up: they are ejected, connected.
    for replica in (a, b):
        replica.process.signal(signal.SIGSTOP)
    try:
        with (
            Client(router.address, max_retries=0, timeout=10) as client,
            pytest.raises(UnavailableError),
        ):
            client.generate("m", "x")  # each replica gets one attempt, and is ejected
    finally:
        for replica in (a, b):
            replica.process.signal(signal.SIGCONT)
    for replica in (a, b):
        wait_for_state(router, replica.address, admin_pb.ENDPOINT_STATE_EJECTED)
    status = _admin(router)
    [cluster] = status.clusters
    assert (cluster.endpoints, cluster.ejected_endpoints, cluster.max_ejected_endpoints) == (
        2,
        2,
        2,
    )
    panic = {
        (p.route, p.priority): (p.healthy_endpoints, p.endpoints, p.panic)
        for p in status.priorities
    }
    assert panic == {("m", 0): (0, 2, True), ("strict", 0): (0, 2, False)}
    with Client(router.address, max_retries=0, timeout=10) as client:
        assert [client.generate("m", "x").text for _ in range(10)] == ["ok"] * 10
        with pytest.raises(UnavailableError) as refused:
            client.generate("strict", "x")
    assert refused.value.reason == "NO_HEALTHY_ENDPOINT"
    samples = scrape(metrics_port)
    assert value(samples, "switchyard_router_lb_healthy_panic_total", model="m") >= 10
    assert value(samples, "switchyard_router_ejections_active", cluster="pool") == 2
    assert all(e.state == admin_pb.ENDPOINT_STATE_EJECTED for e in endpoints(router))
    shown = shown_endpoints(router)
    assert "cluster pool: 2 of 2 ejected, at most 2" in shown
    assert "route m priority 0: PANIC, 0 of 2 healthy" in shown
    assert "route strict" not in shown


def test_every_endpoint_unreachable_is_unavailable_at_once_with_retry_info(fleet: Fleet) -> None:
    a = Replica(fleet, "a", [{"id": "m"}])
    b = Replica(fleet, "b", [{"id": "m"}])
    router = fleet.router(
        {
            "clusters": {"pool": _cluster(a, b)},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    for replica in (a, b):
        replica.stop(signal.SIGKILL)
        wait_for_state(router, replica.address, admin_pb.ENDPOINT_STATE_UNREACHABLE)
    with (
        Client(router.address, max_retries=0, timeout=30) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.generate("m", "x")
    assert caught.value.reason == "NO_HEALTHY_ENDPOINT"
    assert caught.value.retry_after == 1.0
    assert a.address in caught.value.message and b.address in caught.value.message
    # At once: no attempt was made (none could connect), nothing waited for a replica.
    deadline = time.monotonic() + 5
    while "code=UNAVAILABLE" not in router.log():  # the access line follows the answer
        assert time.monotonic() < deadline, router.log()
        time.sleep(0.02)
    assert "code=UNAVAILABLE attempts=0" in router.log()


class SlowHandshakeRelay:
    """A TCP relay in front of a model server whose connections start answering only
    ``delay`` seconds after they open, as a far replica's TCP, TLS and HTTP/2 set-up
    takes (several round trips across regions). Then bytes pass both ways."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._closing.wait(self.delay):
            client.close()
            return
        with client, socket.create_connection(self.upstream) as upstream:
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
            _pipe(client, upstream)

    def close(self) -> None:
        self._closing.set()
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_a_replica_whose_connections_take_longer_than_the_reconnect_backoff_is_reached(
    fleet: Fleet,
) -> None:
    # The reconnect back-off (0.1 s up to 0.3 s) paces connection attempts; it must
    # not also cut each attempt short: a far replica takes longer than that to connect.
    replica = Replica(fleet, "far", [{"id": "m", "reply": "from-far"}])
    relay = SlowHandshakeRelay(replica.address, delay=1.0)
    try:
        router = fleet.router(
            {
                "clusters": {"pool": {"endpoints": [relay.address]}},
                "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
            }
        )
        wait_for_state(router, relay.address, admin_pb.ENDPOINT_STATE_HEALTHY)
        with Client(router.address, max_retries=0, timeout=10) as client:
            assert client.generate("m", "x").text == "from-far"
    finally:
        relay.close()


async def test_every_request_in_flight_on_a_replica_that_dies_is_retried_on_the_healthy_one(
    fleet: Fleet,
) -> None:
    # Far more calls in flight on the dying replica than the retry budget's burst
    # (half of budget_max_tokens: 50): the router must not throttle retries that go
    # to a healthy replica because one replica went away at once.
    models = [{"id": "echo", "token_delay_ms": 300, "concurrency": 1000}]
    a = fleet.scripted("a", models, metrics=True)
    b = fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [a.address, b.address]}},
            "routes": [{"model": "echo", "targets": [{"cluster": "pool"}]}],
        }
    )
    wait_healthy(router)
    async with AsyncClient(router.address, max_retries=0, timeout=60) as client:

        async def call(index: int) -> str:
            prompt = f"call{index} {WORDS}"
            return (await client.generate("echo", prompt)).text

        calls = [asyncio.create_task(call(i)) for i in range(240)]
        await asyncio.to_thread(wait_in_flight, a, "echo", 90)
        a.signal(signal.SIGKILL)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    failed = [o for o in outcomes if not isinstance(o, str)]
    assert failed == []
    assert outcomes == [f"call{i} {WORDS}" for i in range(240)]
