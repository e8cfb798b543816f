"""What do fleet-wide limits and the response cache cost the router?

One scripted model server (no model cost), a real redis-server, and three routers
in front of them: ``plain`` (no auth), ``local`` (a key with request and token
rates and a daily token budget, counted in the router process; answers cached in
its memory) and ``redis`` (the same key counted in Redis, one Lua round trip per
request; answers cached in Redis). The limits are set high enough never to bite.
Prints, side by side:

  unary latency p50/p99 at concurrency 1 (interleaved), and router CPU per request
  at concurrency 16: plain vs local limits vs Redis limits (with Redis's own CPU)
  a cache hit vs a miss (a new greedy prompt each time, so the answer is also
  stored), latency and router CPU, with the memory cache and with Redis

    .venv/bin/python benchmarks/fleet_overhead.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc.aio
from harness import cpu_seconds, free_port, percentile, start, stop, wait_serving

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

KEY = "sk-fleet-benchmark"
RATE_ONLY_KEY = "sk-fleet-benchmark-rate-only"
METADATA = (("authorization", f"Bearer {KEY}"),)
RATE_ONLY = (("authorization", f"Bearer {RATE_ONLY_KEY}"),)
Stub = Any
_prompts = itertools.count()


def _request(model: str, fresh: bool) -> pb.GenerateRequest:
    """A greedy request: the same one each time, or a new prompt (a cache miss)."""
    prompt = f"prompt {next(_prompts)}" if fresh else "the same prompt"
    return pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(temperature=0))


async def _latency(stubs: dict[str, tuple[Stub, str, bool]], n: int) -> dict[str, list[float]]:
    """Unary latency, interleaved: per name, (stub, model, fresh prompt each time)."""
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    for _ in range(n):
        for name, (stub, model, fresh) in stubs.items():
            request = _request(model, fresh)
            begin = time.perf_counter()
            await stub.Generate(request, metadata=METADATA)
            samples[name].append(time.perf_counter() - begin)
    return samples


async def _cpu_per_request(
    pids: list[int],
    stub: Stub,
    model: str,
    fresh: bool,
    count: int,
    metadata: tuple[tuple[str, str], ...] = METADATA,
) -> list[float]:
    """CPU seconds per request of each of ``pids`` for ``count`` requests, 16 at once."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await stub.Generate(_request(model, fresh), metadata=metadata)

    before = [cpu_seconds(pid) for pid in pids]
    await asyncio.gather(*(worker() for _ in range(16)))
    return [(cpu_seconds(pid) - b) / count for pid, b in zip(pids, before, strict=True)]


def _start_redis(binary: str, port: int, work: Path) -> subprocess.Popen[bytes]:
    """redis-server on ``port``, nothing saved to disk; returns once it answers."""
    with (work / "redis.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--maxmemory", "128mb", "--dir", str(work)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            time.sleep(0.02)
    sys.exit("redis-server did not start")


async def run(smoke: bool) -> None:
    redis_binary = shutil.which("redis-server")
    if redis_binary is None:
        sys.exit("redis-server is not installed: run scripts/setup.sh")
    work = Path(tempfile.mkdtemp(prefix="switchyard-fleet-bench-"))
    ports = {name: free_port() for name in ("redis", "server", "plain", "local", "redis-router")}
    upstream = f"127.0.0.1:{ports['server']}"
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    redis = _start_redis(redis_binary, ports["redis"], work)
    processes: list[subprocess.Popen[bytes]] = [redis]
    key = {
        "id": "bench",
        "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
        "requests_per_minute": 10_000_000,
        "tokens_per_minute": 10_000_000_000,
        "token_budget": {"per_day": 10**15},
    }
    rate_only = {
        "id": "bench-rate-only",
        "sha256": hashlib.sha256(RATE_ONLY_KEY.encode()).hexdigest(),
        "requests_per_minute": 10_000_000,
    }
    base: dict[str, Any] = {
        "clusters": {"pool": {"endpoints": [upstream]}},
        "routes": [
            {"model": "ok", "targets": [{"cluster": "pool"}]},
            {"model": "cached", "targets": [{"cluster": "pool", "model": "ok"}], "cache": {}},
        ],
        "access_log": False,
    }
    configs = {
        "plain": {**base, "listen": f"127.0.0.1:{ports['plain']}"},
        "local": {
            **base,
            "listen": f"127.0.0.1:{ports['local']}",
            "auth": {"keys": [key, rate_only]},
        },
        "redis": {
            **base,
            "listen": f"127.0.0.1:{ports['redis-router']}",
            "auth": {"keys": [key, rate_only]},
            "limits_backend": "redis",
            "redis": {"url": redis_url},
            "response_cache": {"backend": "redis"},
        },
    }
    model = {"id": "ok", "reply": "fine", "concurrency": 256}
    try:
        processes.append(
            start(
                work,
                "modelserver",
                "switchyard_modelserver",
                {
                    "listen": upstream,
                    "max_queue_per_model": 256,
                    "backend": {"kind": "scripted", "models": [model]},
                },
            )
        )
        wait_serving(upstream)
        routers = {name: start(work, f"router-{name}", "switchyard_router", c)
                   for name, c in configs.items()}  # fmt: skip
        processes += routers.values()
        for config in configs.values():
            wait_serving(str(config["listen"]))
        for name, process in routers.items():  # not another server that took its port
            if process.poll() is not None:
                sys.exit(f"router {name} exited (see {work}/router-{name}.log)")
        channels = {n: grpc.aio.insecure_channel(str(c["listen"])) for n, c in configs.items()}
        stubs = {name: pb_grpc.LLMServiceStub(channel) for name, channel in channels.items()}
        n, count, rounds = (20, 100, 1) if smoke else (2000, 3000, 3)
        for stub in stubs.values():  # warm-up (connections, scripts loaded into Redis)
            await _latency({"w": (stub, "ok", False)}, 20)
        latency = await _latency({name: (stub, "ok", False) for name, stub in stubs.items()}, n)
        cpu: dict[str, list[float]] = {name: [] for name in stubs}
        rate_cpu: dict[str, list[float]] = {name: [] for name in ("local", "redis")}
        redis_cpu: list[float] = []
        for _ in range(rounds):
            for name, stub in stubs.items():
                pids = [routers[name].pid, redis.pid]
                router_cpu, redis_part = await _cpu_per_request(pids, stub, "ok", False, count)
                cpu[name].append(router_cpu)
                if name == "redis":
                    redis_cpu.append(redis_part)
                if name in rate_cpu:  # admission alone: nothing to settle afterwards
                    rate_cpu[name].append(
                        (await _cpu_per_request(pids, stub, "ok", False, count, RATE_ONLY))[0]
                    )
        cache_cases = {
            f"{store} {outcome}": (stubs[name], "cached", outcome == "miss")
            for name, store in (("local", "memory"), ("redis", "Redis"))
            for outcome in ("hit", "miss")
        }
        for stub, model_name, _ in cache_cases.values():  # the "same prompt" is cached
            await stub.Generate(_request(model_name, False), metadata=METADATA)
        await asyncio.sleep(0.2)  # Redis writes are in the background
        cache_latency = await _latency(cache_cases, n)
        cache_cpu: dict[str, list[float]] = {case: [] for case in cache_cases}
        for _ in range(rounds):
            for case, (stub, model_name, fresh) in cache_cases.items():
                pid = routers["local" if case.startswith("memory") else "redis"].pid
                cache_cpu[case].append(
                    (await _cpu_per_request([pid], stub, model_name, fresh, count))[0]
                )
        for channel in channels.values():
            await channel.close(None)
    finally:
        stop(processes)

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1e3:.3f} ms"

    def us(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e6:.0f} µs"

    print(f"scripted backend; router, model server, Redis and client share this machine ({work})")
    print("| measure | plain (no auth) | local limits | Redis limits |")
    print("|---|---|---|---|")
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        row = " | ".join(ms(latency[name], q) for name in ("plain", "local", "redis"))
        print(f"| unary latency {label}, concurrency 1 | {row} |")
    row = " | ".join(us(cpu[name]) for name in ("plain", "local", "redis"))
    print(f"| router CPU per request, concurrency 16 | {row} |")
    rate_row = f"{us(rate_cpu['local'])} | {us(rate_cpu['redis'])}"
    print(f"| the same, a key with only a request rate (nothing to settle) | | {rate_row} |")
    print(f"| Redis CPU per request | | | {us(redis_cpu)} |")
    print()
    print("| response cache | latency p50 | latency p99 | router CPU per request |")
    print("|---|---|---|---|")
    for case in cache_cases:
        print(
            f"| {case} | {ms(cache_latency[case], 0.5)} | {ms(cache_latency[case], 0.99)} "
            f"| {us(cache_cpu[case])} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests: checks it runs")
    asyncio.run(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()
