"""Router: resume on the real engine, config reload under load, DNS endpoints, visibility."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fleet import Fleet, endpoints, wait_access_lines, wait_for_state, wait_in_flight
from processes import ServerProcess, free_port, wait_until

from switchyard import AsyncClient, Client, FinishReason
from switchyard.v1 import router_admin_pb2 as admin_pb


async def _until(condition: Callable[[], object], what: str, timeout: float = 15) -> None:
    """Waits (without blocking the event loop) until ``condition`` holds."""
    await asyncio.to_thread(wait_until, condition, what, timeout)


def _slow_llama(fleet: Fleet, models_dir: Path, label: str) -> ServerProcess:
    directory = fleet.workdir / f"models-{label}"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    return fleet.modelserver(
        label, {"backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1}}
    )


def test_resume_after_kill_9_gives_the_uninterrupted_greedy_text(
    fleet: Fleet, models_dir: Path
) -> None:
    a, b = _slow_llama(fleet, models_dir, "a"), _slow_llama(fleet, models_dir, "b")
    router = fleet.router(
        {
            "clusters": {"cpu": {"endpoints": [a.address, b.address]}},
            "routes": [{"model": "tiny-slow", "resume": True, "targets": [{"cluster": "cpu"}]}],
        }
    )
    options: dict[str, Any] = {"max_tokens": 600, "temperature": 0.0}
    with Client(a.address) as direct:
        expected = direct.generate("tiny-slow", "hello world", **options)
    assert expected.usage.completion_tokens == 600

    with Client(router.address, timeout=60) as client:
        stream = client.stream("tiny-slow", "hello world", **options)
        chunks = [next(stream) for _ in range(5)]
        serving = [e.address for e in endpoints(router) if e.outstanding_requests == 1]
        assert len(serving) == 1
        victim = a if serving[0] == a.address else b
        victim.process.kill()
        chunks += list(stream)
    final = chunks[-1]
    assert "".join(c.text for c in chunks) == expected.text
    assert final.resumes == 1
    assert final.finish_reason is FinishReason.LENGTH
    assert final.usage is not None and final.usage.completion_tokens == 600


def _config(clusters: dict[str, Any], target: str) -> dict[str, Any]:
    return {
        "clusters": clusters,
        "routes": [{"model": "m", "targets": [{"cluster": target}]}],
    }


async def test_reload_under_load_drops_nothing_and_refuses_an_invalid_config(
    fleet: Fleet,
) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a", "token_delay_ms": 5}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b", "token_delay_ms": 5}])
    clusters = {"a": {"endpoints": [a.address]}, "b": {"endpoints": [b.address]}}
    router = fleet.router(_config(clusters, "a"))
    config_path = fleet.rewrite_router_config("router", _config(clusters, "a"))
    replies: list[str] = []
    stop = asyncio.Event()
    async with AsyncClient(router.address, max_retries=0, timeout=10) as client:

        async def load() -> None:
            while not stop.is_set():
                replies.append((await client.generate("m", "x")).text)

        workers = [asyncio.create_task(load()) for _ in range(4)]
        await _until(lambda: len(replies) >= 8, "the load running")
        fleet.rewrite_router_config("router", _config(clusters, "b"))
        router.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not replies or replies[-1] != "from-b":
            assert time.monotonic() < deadline, router.log()
            await asyncio.sleep(0.05)
        config_path.write_text(
            "clusters: {}\nroutes: [{model: m, targets: [{cluster: nowhere}]}]\n"
        )
        router.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "config reload refused" not in router.log():
            assert time.monotonic() < deadline, router.log()
            await asyncio.sleep(0.05)
        before = len(replies)
        await _until(lambda: len(replies) >= before + 20, "20 requests after the refusal")
        stop.set()
        await asyncio.gather(*workers)  # any failed request raises here
    assert set(replies[before:]) == {"from-b"}  # the invalid config changed nothing
    refusal = router.log().split("config reload refused", 1)[1]
    assert "clusters: " in refusal[:600]  # the log names the bad key


def test_a_changed_config_file_is_applied_without_a_signal(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "from-a"}])
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b"}])
    clusters = {"a": {"endpoints": [a.address]}, "b": {"endpoints": [b.address]}}
    router = fleet.router(_config(clusters, "a"))
    with Client(router.address, max_retries=0) as client:
        assert client.generate("m", "x").text == "from-a"
        path = fleet.rewrite_router_config("router", _config(clusters, "b"))
        # A later modification time, even where file systems keep whole seconds.
        stamp = path.stat().st_mtime + 2
        os.utime(path, (stamp, stamp))
        deadline = time.monotonic() + 10
        while client.generate("m", "x").text != "from-b":
            assert time.monotonic() < deadline, router.log()
            time.sleep(0.1)


def test_dns_endpoints_resolve_to_the_model_servers(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m", "reply": "via-dns"}])
    port = a.address.rsplit(":", 1)[1]
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [f"dns:///localhost:{port}"]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    with Client(router.address, max_retries=0) as client:
        assert client.generate("m", "x").text == "via-dns"
        [model] = client.list_models()
    assert model.ready
    assert model.healthy_replicas >= 1


def test_cli_shows_every_endpoint_state(fleet: Fleet) -> None:
    a = fleet.scripted("a", [{"id": "m"}])
    b = fleet.scripted("b", [{"id": "m"}])
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [a.address, b.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    b.process.kill()
    wait_for_state(router, b.address, admin_pb.ENDPOINT_STATE_UNREACHABLE)
    result = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "--target", router.address, "endpoints"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines()[1:]}
    assert "healthy" in rows[a.address]
    assert "m=serving" in rows[a.address]
    assert "unreachable" in rows[b.address]
    with Client(router.address) as client:
        [model] = client.list_models()
    assert (model.healthy_replicas, model.total_replicas) == (1, 2)


async def test_reload_that_removes_the_cluster_in_use_lets_in_flight_requests_finish(
    fleet: Fleet,
) -> None:
    words = "one two three four five six"
    a = fleet.scripted("a", [{"id": "m", "reply": words, "token_delay_ms": 200}], metrics=True)
    b = fleet.scripted("b", [{"id": "m", "reply": "from-b"}])
    router = fleet.router(_config({"a": {"endpoints": [a.address]}}, "a"))
    async with AsyncClient(router.address, max_retries=0, timeout=20) as client:
        stream = client.stream("m", "x")
        first = await anext(stream)
        unary = asyncio.create_task(client.generate("m", "x"))
        await asyncio.to_thread(wait_in_flight, a, "m", 2)  # the unary request is on a too
        fleet.rewrite_router_config("router", _config({"b": {"endpoints": [b.address]}}, "b"))
        router.signal(signal.SIGHUP)
        rest = [chunk.text async for chunk in stream]
        assert first.text + "".join(rest) == words  # drained, not cut
        assert (await unary).text == words
        assert (await client.generate("m", "x")).text == "from-b"


def test_a_resume_route_answers_invalid_argument_to_an_unreadable_request(fleet: Fleet) -> None:
    import grpc

    a = fleet.scripted("a", [{"id": "m"}])
    router = fleet.router(
        {
            "clusters": {"a": {"endpoints": [a.address]}},
            "routes": [{"model": "m", "resume": True, "targets": [{"cluster": "a"}]}],
        }
    )
    raw = b"\x0a\x01m" + b"\x12\x02\xff\xfe"  # model "m", a prompt that is not UTF-8
    with grpc.insecure_channel(router.address) as channel:
        call = channel.unary_stream("/switchyard.v1.LLMService/StreamGenerate", None, None)
        with pytest.raises(grpc.RpcError) as caught:
            list(call(raw, timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _port_free_on(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (loopback addresses) a moment ago."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


def _with_hosts_file(hosts: Path) -> list[str]:
    """A command prefix: the server runs in a mount namespace of its own where
    ``hosts`` is /etc/hosts, so a test can change what a name resolves to for it
    alone (glibc reads the file at every lookup)."""
    namespace = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        namespace.insert(1, "--map-root-user")
    return [*namespace, "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts)]


def test_dns_endpoints_that_vanish_are_drained(fleet: Fleet) -> None:
    name, port = "pool.switchyard.test", _port_free_on("127.0.0.1", "127.0.0.2")
    hosts = fleet.workdir / "hosts"
    hosts.write_text(f"127.0.0.1 {name}\n127.0.0.2 {name}\n")
    words = "one two three four five six seven eight"
    scripted = {"backend": {"kind": "scripted", "models": [{"id": "m", "reply": "from-a"}]}}
    a = fleet.modelserver("a", scripted, port=port)
    slow = [{"id": "m", "reply": words, "token_delay_ms": 200}]
    b = fleet.modelserver(
        "b", {"backend": {"kind": "scripted", "models": slow}}, port=port, host="127.0.0.2"
    )
    router = fleet.router(
        {
            "clusters": {
                "pool": {"endpoints": [f"dns:///{name}:{port}"], "dns_refresh_seconds": 0.2}
            },
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        },
        wrapper=_with_hosts_file(hosts),
    )
    wait_for_state(router, a.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    wait_for_state(router, b.address, admin_pb.ENDPOINT_STATE_HEALTHY)
    with Client(router.address, max_retries=0, timeout=30) as client:
        for _ in range(50):  # until a stream lands on b (the balancer picks at random)
            held = client.stream("m", "x")
            first = next(held)
            if first.text == "one":
                break
            list(held)
        else:
            raise AssertionError("no stream went to b")
        hosts.write_text(f"127.0.0.1 {name}\n")  # b's address vanishes from DNS
        wait_until(
            lambda: b.address not in {e.address for e in endpoints(router)},
            "b out of the router's endpoints",
        )
        assert f"endpoint {b.address} left; draining" in router.log()
        # No new request reaches b; the one in flight there finishes, not cut.
        assert {client.generate("m", "x").text for _ in range(10)} == {"from-a"}
        rest = list(held)
    assert first.text + "".join(chunk.text for chunk in rest) == words
    assert rest[-1].finish_reason is FinishReason.STOP
    [line] = wait_access_lines(b, 1)
    assert (line["method"], line["code"]) == ("StreamGenerate", "OK")
