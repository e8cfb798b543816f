"""What do API keys and per-key rate limits cost the router?

Two routers in front of one scripted model server: one without ``auth``, one
with a key that has request and token limits (set high enough never to bite),
so every request is authenticated, admitted by two token buckets and charged
with the tokens read from its answer's usage. Prints, side by side:

  unary latency p50/p99 at concurrency 1 (interleaved)
  router CPU per unary request at concurrency 16
  router CPU per relayed stream message (1 token per ms, so about one message
  per 10 ms coalescing window)
  and, in this process, the Python the router adds per request with auth on
  (authenticate, admit through two buckets, read the usage from the answer and
  charge it):
  end to end, that difference is smaller than the noise of a shared machine

    .venv/bin/python benchmarks/router_auth_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from harness import (
    SMOKE_HELP,
    cpu_seconds,
    free_port,
    percentile,
    relay_streams,
    start,
    stop,
    wait_serving,
)

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

TICKS = os.sysconf("SC_CLK_TCK")
KEY = "sk-benchmark-key"
Metadata = tuple[tuple[str, str], ...]


async def _latency(
    stubs: dict[str, tuple[pb_grpc.LLMServiceAsyncStub, Metadata]], n: int
) -> dict[str, list[float]]:
    request = pb.GenerateRequest(model="ok", prompt="x")
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    for stub, metadata in stubs.values():
        for _ in range(50):
            await stub.Generate(request, metadata=metadata)
    for _ in range(n):
        for name, (stub, metadata) in stubs.items():
            start = time.perf_counter()
            await stub.Generate(request, metadata=metadata)
            samples[name].append(time.perf_counter() - start)
    return samples


async def _unary_cpu(
    pid: int, stub: pb_grpc.LLMServiceAsyncStub, metadata: Metadata, count: int
) -> float:
    """Router CPU seconds per request for ``count`` requests at concurrency 16."""
    request = pb.GenerateRequest(model="ok", prompt="x")
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await stub.Generate(request, metadata=metadata)

    before = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(16)))
    return (cpu_seconds(pid) - before) / count


async def _stream_cpu(
    pid: int, stub: pb_grpc.LLMServiceAsyncStub, metadata: Metadata, count: int
) -> float:
    """Router CPU seconds per relayed message for ``count`` paced streams, 8 at once."""
    request = pb.StreamGenerateRequest(model="paced", prompt="x")
    before = cpu_seconds(pid)
    messages = await relay_streams(stub, request, count, concurrency=8, metadata=metadata)
    return (cpu_seconds(pid) - before) / messages


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="switchyard-auth-bench-"))
    # Latency samples, unary requests and streams per measurement, and rounds.
    samples, unary, streams, rounds = (
        (20, 30, 4, 1) if args.smoke else (500, 750, 16, 3) if args.quick else (2000, 3000, 64, 3)
    )
    ports = {name: free_port() for name in ("server", "plain", "auth")}
    server = f"127.0.0.1:{ports['server']}"
    models = [
        {"id": "ok", "reply": "fine", "concurrency": 256},
        {"id": "paced", "reply": "word " * 200, "token_delay_ms": 1, "concurrency": 256},
    ]
    processes = [
        start(
            work,
            "modelserver",
            "switchyard_modelserver",
            {
                "listen": server,
                "max_queue_per_model": 256,
                "backend": {"kind": "scripted", "models": models},
            },
        )
    ]
    base = {
        "clusters": {"pool": {"endpoints": [server]}},
        "routes": [{"model": m["id"], "targets": [{"cluster": "pool"}]} for m in models],
    }
    auth = {
        "keys": [
            {
                "id": "bench",
                "sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                "requests_per_minute": 10_000_000,
                "tokens_per_minute": 10_000_000_000,
            }
        ]
    }
    try:
        wait_serving(server)
        routers = {
            "plain": start(
                work,
                "router-plain",
                "switchyard_router",
                {**base, "listen": f"127.0.0.1:{ports['plain']}"},
            ),
            "auth": start(
                work,
                "router-auth",
                "switchyard_router",
                {**base, "listen": f"127.0.0.1:{ports['auth']}", "auth": auth},
            ),
        }
        processes += routers.values()
        for name in routers:
            wait_serving(f"127.0.0.1:{ports[name]}")
        channels = {n: grpc.aio.insecure_channel(f"127.0.0.1:{ports[n]}") for n in routers}
        stubs: dict[str, tuple[Any, Metadata]] = {
            "plain": (pb_grpc.LLMServiceStub(channels["plain"]), ()),
            "auth": (
                pb_grpc.LLMServiceStub(channels["auth"]),
                (("authorization", f"Bearer {KEY}"),),
            ),
        }
        latency = await _latency(stubs, samples)
        unary_cpu: dict[str, list[float]] = {n: [] for n in routers}
        stream_cpu: dict[str, list[float]] = {n: [] for n in routers}
        for _ in range(rounds):  # interleaved rounds
            for name, (stub, metadata) in stubs.items():
                pid = routers[name].pid
                unary_cpu[name].append(await _unary_cpu(pid, stub, metadata, unary))
                stream_cpu[name].append(await _stream_cpu(pid, stub, metadata, streams))
        for channel in channels.values():
            await channel.close(None)
    finally:
        stop(processes)

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1e3:.3f} ms"

    def us(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e6:.1f} µs"

    print("| measure | no auth | auth + rate limits | difference |")
    print("|---|---|---|---|")
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        plain, keyed = percentile(latency["plain"], q), percentile(latency["auth"], q)
        print(
            f"| unary latency {label}, concurrency 1 | {ms(latency['plain'], q)} | "
            f"{ms(latency['auth'], q)} | {(keyed - plain) * 1e3:+.3f} ms |"
        )
    plain_cpu, auth_cpu = (
        statistics.median(unary_cpu["plain"]),
        statistics.median(unary_cpu["auth"]),
    )
    print(
        f"| router CPU per unary request, concurrency 16 | {us(unary_cpu['plain'])} | "
        f"{us(unary_cpu['auth'])} | {(auth_cpu - plain_cpu) * 1e6:+.1f} µs |"
    )
    plain_msg, auth_msg = (
        statistics.median(stream_cpu["plain"]),
        statistics.median(stream_cpu["auth"]),
    )
    print(
        f"| router CPU per relayed stream message | {us(stream_cpu['plain'])} | "
        f"{us(stream_cpu['auth'])} | {(auth_msg - plain_msg) * 1e6:+.1f} µs |"
    )


def in_process_cost(runs: int = 20_000) -> float:
    """Microseconds of the router's per-request auth work, measured in this process."""
    import timeit

    from switchyard_router.auth import Guard
    from switchyard_router.config import AuthConfig
    from switchyard_router.fleet import Ask
    from switchyard_router.fleet.local import LocalFleetState
    from switchyard_router.wire import GENERATE_USAGE_FIELD, read_usage_tokens

    guard = Guard(
        AuthConfig.model_validate(
            {
                "keys": [
                    {
                        "id": f"key-{index}",
                        "sha256": hashlib.sha256(f"{KEY}-{index}".encode()).hexdigest(),
                        "requests_per_minute": 1e9,
                        "tokens_per_minute": 1e12,
                    }
                    for index in range(10)
                ]
            }
        )
    )
    metadata = (("authorization", f"Bearer {KEY}-9"), ("user-agent", "grpc-python/1.85"))
    answer = pb.GenerateResponse(
        text="fine " * 100, usage=pb.Usage(prompt_tokens=5, completion_tokens=100), model="ok"
    ).SerializeToString()

    fleet = LocalFleetState()

    def one_request() -> None:
        principal = guard.authenticate(metadata)
        ticket = fleet.admit_now(Ask(principal.limits))
        fleet.settle(ticket, read_usage_tokens(answer, GENERATE_USAGE_FIELD))

    return min(timeit.repeat(one_request, number=runs, repeat=5)) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the samples")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    asyncio.run(run(args))
    cost = in_process_cost(200 if args.smoke else 20_000)
    print(f"\nin-process auth work per request (10 keys configured): {cost:.1f} µs")


if __name__ == "__main__":
    main()
