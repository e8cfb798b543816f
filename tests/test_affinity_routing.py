"""policy: prefix_affinity through real routers and scripted replicas: conversations and
sessions keep their replica across turns, router restarts and router replicas; a hot
key spills within the bound; failover and resume fall back to least_outstanding.

Each replica answers with its own name, so an answer says where it was served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fleet import Fleet, reported_requests
from processes import ServerProcess, free_port, wait_until

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_router.affinity import AffinityKeys
from switchyard_router.hash_ring import HashRing

SYSTEM = "You are a terse assistant. " * 20
SESSION = "x-session-id"


def replicas(fleet: Fleet, names: str, **models: dict[str, Any]) -> list[ServerProcess]:
    """One scripted replica per letter: model "m" answers the letter (overridable per
    replica), "hold" answers the letter and then holds the stream for a minute."""
    servers = []
    for name in names:
        m = {"id": "m", "reply": name, **models.get(name, {})}
        hold = {"id": "hold", "reply": f"{name} x", "token_delay_ms": 60_000}
        slow = {"id": "slow", "reply": "x", "first_token_delay_ms": 60_000, "concurrency": 1}
        servers.append(fleet.scripted(name, [m, hold, slow], min_load_report_interval_seconds=0.05))
    return servers


def router_config(servers: list[ServerProcess], **affinity: Any) -> dict[str, Any]:
    route: dict[str, Any] = {
        "policy": "prefix_affinity",
        "targets": [{"cluster": "pool"}],
        "affinity": {"session_metadata_key": SESSION, **affinity},
    }
    resume_route = {**route, "resume": True, "targets": [{"cluster": "pool", "model": "m"}]}
    return {
        "clusters": {
            "pool": {
                "endpoints": [s.address for s in servers],
                "load_report_interval_seconds": 0.05,
                # Failing attempts must not eject the replica: failover is under test.
                "outlier_detection": {"consecutive_failures": 1000},
            }
        },
        "routes": [
            {"model": "m", **route},
            {"model": "m-resume", **resume_route},
            {"model": "hold", **route},
        ],
    }


def conversation(index: int, turns: int) -> list[tuple[str, str]]:
    messages = [("system", SYSTEM), ("user", f"Document {index}: notes on topic {index}.")]
    for turn in range(1, turns):
        messages += [("assistant", f"answer {turn}"), ("user", f"question {turn}?")]
    return messages


class Caller:
    """Chat requests to one router, over one channel."""

    def __init__(self, router: ServerProcess) -> None:
        self.channel = grpc.insecure_channel(router.address)
        self.stub = pb_grpc.LLMServiceStub(self.channel)

    def served(
        self, messages: list[tuple[str, str]], metadata: tuple[tuple[str, str], ...] = ()
    ) -> str:
        """Who answered a chat request (a Generate call with ``metadata``)."""
        turns = [pb.ChatMessage(role=role, content=content) for role, content in messages]
        request = pb.GenerateRequest(model="m", messages=turns)
        return self.stub.Generate(request, metadata=metadata, timeout=30).text

    def close(self) -> None:
        self.channel.close()


def served(router: ServerProcess, *calls: list[tuple[str, str]]) -> list[str]:
    """Who answered each of ``calls`` (chat requests), sent in order to ``router``."""
    caller = Caller(router)
    try:
        return [caller.served(messages) for messages in calls]
    finally:
        caller.close()


def test_each_conversation_keeps_its_replica_and_conversations_spread(fleet: Fleet) -> None:
    servers = replicas(fleet, "ABC")
    router = fleet.router(router_config(servers))
    homes = {}
    for index in range(12):
        answers = set(served(router, *(conversation(index, turns) for turns in range(1, 5))))
        assert len(answers) == 1, f"conversation {index} moved: {answers}"
        homes[index] = answers.pop()
    assert len(set(homes.values())) >= 2  # twelve conversations do not share one replica


def test_two_routers_and_a_restarted_one_send_each_conversation_to_the_same_replica(
    fleet: Fleet,
) -> None:
    servers = replicas(fleet, "ABC")
    first = fleet.router(router_config(servers), label="first")
    second = fleet.router(router_config(servers), label="second")
    homes = served(first, *(conversation(i, 1) for i in range(12)))
    assert served(second, *(conversation(i, 3) for i in range(12))) == homes
    first.stop()
    restarted = fleet.router(router_config(servers), label="restarted")
    assert served(restarted, *(conversation(i, 2) for i in range(12))) == homes


def test_a_session_key_keeps_a_sessions_requests_together_whatever_they_say(
    fleet: Fleet,
) -> None:
    servers = replicas(fleet, "ABC")
    router = fleet.router(router_config(servers))
    homes = {}
    caller = Caller(router)
    for session in range(12):
        metadata = ((SESSION, f"user-{session}"),)
        answers = {caller.served([("user", f"question {n}")], metadata) for n in range(4)}
        assert len(answers) == 1, f"session {session} moved: {answers}"
        homes[session] = answers.pop()
    caller.close()
    assert len(set(homes.values())) >= 2


async def test_a_hot_conversation_spills_once_its_replica_holds_its_share(
    fleet: Fleet,
) -> None:
    servers = replicas(fleet, "AB")
    router = fleet.router(router_config(servers))
    served_by: list[str] = []
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        request = pb.StreamGenerateRequest(model="hold", prompt="the same hot prompt")
        streams = []
        for _ in range(8):  # each stays open: the replica holds its second token
            stream = stub.StreamGenerate(request, timeout=120)
            streams.append(stream)
            first = await stream.read()
            assert isinstance(first, pb.StreamGenerateResponse)
            served_by.append(first.text.strip())
        for stream in streams:
            stream.cancel()
    home = served_by[0]
    # With 8 in flight on 2 replicas, at most ceil(1.25 * 8 / 2) = 5 on the key's own.
    assert served_by.count(home) == 5 and len(served_by) == 8
    assert served_by[:2] == [home, home]  # it stays home while under the bound


def _session_with_ring(servers: list[ServerProcess], order: str) -> str:
    """A session id whose replicas on the router's hash ring come in ``order``
    (computed with the router's own key and ring, as every router computes them)."""
    keys = AffinityKeys(session_metadata_key=SESSION)
    by_address = {s.address: s.name.rsplit("-", 1)[1] for s in servers}
    ring = HashRing({address: name for address, name in by_address.items()})
    for n in range(10_000):
        session = f"user-{n}"
        key = keys.key(b"", ((SESSION, session),))
        assert key is not None
        if "".join(ring.walk(key)) == order:
            return session
    raise AssertionError(f"no session with ring order {order}")


@contextlib.asynccontextmanager
async def _held(server: ServerProcess, requests: int) -> AsyncIterator[None]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        calls = [
            stub.Generate(pb.GenerateRequest(model="slow", prompt="x")) for _ in range(requests)
        ]
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


async def test_failover_and_resume_go_to_the_least_loaded_not_the_next_on_the_ring(
    fleet: Fleet,
) -> None:
    # A fails every request after two tokens. B is busier than C (another client holds
    # one request there) but within the bound (load_factor 2), so a retry that followed
    # the ring would go to B; least_outstanding sends it to C.
    failing = {"reply": "A0 A1 A2 A3", "fail_after_tokens": 2, "token_delay_ms": 20}
    servers = replicas(
        fleet,
        "ABC",
        A=failing,
        B={"reply": "B0 B1 B2 B3"},
        C={"reply": "C0 C1 C2 C3"},
    )
    metrics = free_port()
    config = router_config(servers, load_factor=2.0)
    router = fleet.router({**config, "metrics_listen": f"127.0.0.1:{metrics}"})
    session = _session_with_ring(servers, "ABC")
    metadata = ((SESSION, session),)
    async with _held(servers[1], 1), grpc.aio.insecure_channel(router.address) as channel:
        await asyncio.to_thread(_wait_running, metrics, servers[1].address)
        stub = pb_grpc.LLMServiceStub(channel)
        unary = await stub.Generate(
            pb.GenerateRequest(model="m", prompt="question"), metadata=metadata, timeout=30
        )
        assert unary.text == "C0 C1 C2 C3"  # retried on C, not on B
        stream = stub.StreamGenerate(
            pb.StreamGenerateRequest(model="m-resume", prompt="question"),
            metadata=metadata,
            timeout=30,
        )
        streamed = "".join([message.text async for message in stream])
        assert streamed == "A0 A1 C2 C3"  # resumed on C after A's two tokens


def _wait_running(port: int, address: str) -> None:
    wait_until(
        lambda: reported_requests(port, address, "running") == 1,
        f"the router hears of {address}'s running request",
        timeout=30,
    )


def test_a_session_header_on_the_http_front_keeps_a_session_together(fleet: Fleet) -> None:
    servers = replicas(fleet, "ABC")
    port = free_port()
    fleet.router({**router_config(servers), "http_listen": f"127.0.0.1:{port}"})
    wait_until(lambda: _ready(port), "the HTTP front is ready")
    homes = {}
    for session in range(12):
        answers = set()
        for n in range(3):
            body = {"model": "m", "messages": [{"role": "user", "content": f"question {n}"}]}
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=json.dumps(body).encode(),
                headers={"content-type": "application/json", SESSION: f"user-{session}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.add(json.load(response)["choices"][0]["message"]["content"])
        assert len(answers) == 1, f"session {session} moved: {answers}"
        homes[session] = answers.pop()
    assert len(set(homes.values())) >= 2


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
