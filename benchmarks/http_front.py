"""What does the HTTP front cost? The same router, called over gRPC and over its
OpenAI-compatible HTTP front, side by side in one run.

Scripted backend (no model cost); client, router and model server share this
machine's cores. Prints, for the gRPC path and the HTTP front:

  unary latency p50/p99 at concurrency 1, and what each adds over calling the model
      server directly (the HTTP column includes its client library's own cost)
  requests/s at concurrency 32, router CPU per request, and requests/s per router core
      (1 / CPU per request: what one core of router can serve)
  streams of 1,000 tokens paced at 1 ms (about 110 messages each): router CPU per
      relayed message (a gRPC message, or an SSE chunk of the HTTP front)

against the issue's goals: HTTP front CPU per request <= 1.5 ms, and requests/s per
core >= 6x LiteLLM's proxy (111 requests/s per worker measured on these machines).

    .venv/bin/python benchmarks/http_front.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
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

WORDS_1000 = "word " * 1000
LITELLM_RPS_PER_WORKER = 111.0
CHAT = [{"role": "user", "content": "x"}]

Call = Callable[[], Awaitable[object]]


def _clients(
    router_stub: pb_grpc.LLMServiceAsyncStub,
    direct_stub: pb_grpc.LLMServiceAsyncStub,
    session: aiohttp.ClientSession,
    url: str,
) -> dict[str, Call]:
    request = pb.GenerateRequest(model="ok", messages=[pb.ChatMessage(role="user", content="x")])
    body = json.dumps({"model": "ok", "messages": CHAT}).encode()
    headers = {"content-type": "application/json"}

    async def http() -> object:
        async with session.post(f"{url}/v1/chat/completions", data=body, headers=headers) as r:
            answer = await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {answer!r}")
            return answer

    return {
        "direct": lambda: direct_stub.Generate(request),
        "grpc": lambda: router_stub.Generate(request),
        "http": http,
    }


async def _latency(calls: dict[str, Call], n: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        for _ in range(max(5, n // 20)):
            await call()
    for _ in range(n):
        for name, call in calls.items():  # interleaved
            started = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - started)
    return samples


async def _throughput(call: Call, seconds: float, concurrency: int) -> int:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _grpc_streams(stub: pb_grpc.LLMServiceAsyncStub, count: int) -> int:
    """Messages relayed over ``count`` streams of ``paced1000``, four at a time."""
    request = pb.StreamGenerateRequest(model="paced1000", prompt="x")
    return await relay_streams(stub, request, count, concurrency=4)


async def _http_streams(session: aiohttp.ClientSession, url: str, count: int) -> int:
    """SSE chunks of content over ``count`` streams of ``paced1000``, four at a time."""
    body = json.dumps({"model": "paced1000", "messages": CHAT, "stream": True}).encode()
    chunks = 0
    remaining = count

    async def worker() -> None:
        nonlocal chunks, remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(f"{url}/v1/chat/completions", data=body) as response:
                async for line in response.content:
                    if line.startswith(b"data: {") and b'"content":"' in line:
                        chunks += 1

    await asyncio.gather(*(worker() for _ in range(4)))
    return chunks


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="switchyard-http-front-bench-"))
    server_port, router_port, http_port = free_port(), free_port(), free_port()
    models = [
        {"id": "ok", "reply": "ok", "concurrency": 256},
        {"id": "paced1000", "reply": WORDS_1000, "token_delay_ms": 1, "concurrency": 256},
    ]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        server_config = {
            "listen": f"127.0.0.1:{server_port}",
            "max_queue_per_model": 1024,
            "backend": {"kind": "scripted", "models": models},
        }
        processes.append(start(work, "modelserver", "switchyard_modelserver", server_config))
        wait_serving(f"127.0.0.1:{server_port}")
        router = start(
            work,
            "router",
            "switchyard_router",
            {
                "listen": f"127.0.0.1:{router_port}",
                "http_listen": f"127.0.0.1:{http_port}",
                "clusters": {"main": {"endpoints": [f"127.0.0.1:{server_port}"]}},
                "routes": [{"model": m["id"], "targets": [{"cluster": "main"}]} for m in models],
            },
        )
        processes.append(router)
        wait_serving(f"127.0.0.1:{router_port}")
        url = f"http://127.0.0.1:{http_port}"
        scale = 0.01 if args.smoke else 0.25 if args.quick else 1.0
        direct_channel = grpc.aio.insecure_channel(f"127.0.0.1:{server_port}")
        router_channel = grpc.aio.insecure_channel(f"127.0.0.1:{router_port}")
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            calls = _clients(
                pb_grpc.LLMServiceStub(router_channel),
                pb_grpc.LLMServiceStub(direct_channel),
                session,
                url,
            )
            latency = await _latency(calls, max(20, int(2000 * scale)))
            seconds = max(0.5, 5 * scale)
            rps: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for name in ("grpc", "http"):
                before = cpu_seconds(router.pid)
                count = await _throughput(calls[name], seconds, 32)
                cpu[name] = (cpu_seconds(router.pid) - before) / count
                rps[name] = count / seconds
            streams = max(2, int(40 * scale))
            per_message: dict[str, float] = {}
            before = cpu_seconds(router.pid)
            messages = await _grpc_streams(pb_grpc.LLMServiceStub(router_channel), streams)
            per_message["grpc"] = (cpu_seconds(router.pid) - before) / messages
            before = cpu_seconds(router.pid)
            chunks = await _http_streams(session, url, streams)
            per_message["http"] = (cpu_seconds(router.pid) - before) / chunks
        await direct_channel.close(grace=None)
        await router_channel.close(grace=None)
    finally:
        stop(processes)

    def ms(value: float) -> str:
        return f"{value * 1e3:.3f} ms"

    p50 = {name: percentile(values, 0.5) for name, values in latency.items()}
    p99 = {name: percentile(values, 0.99) for name, values in latency.items()}
    per_core = {name: 1 / cpu[name] for name in cpu}
    print(f"scripted backend, {os.cpu_count()} CPUs shared by client, router and server")
    print(f"(direct to the model server: p50 {ms(p50['direct'])}, p99 {ms(p99['direct'])})")
    print("| measure | gRPC path | HTTP front | HTTP / gRPC |")
    print("|---|---|---|---|")
    for label, values in (("p50", p50), ("p99", p99)):
        grpc_added = values["grpc"] - values["direct"]
        http_added = values["http"] - values["direct"]
        print(
            f"| unary latency {label}, concurrency 1 (added over direct) | {ms(values['grpc'])} "
            f"(+{ms(grpc_added)}) | {ms(values['http'])} (+{ms(http_added)}) "
            f"| {values['http'] / values['grpc']:.2f}x |"
        )
    print(
        f"| requests/s, concurrency 32 | {rps['grpc']:.0f} | {rps['http']:.0f} "
        f"| {rps['http'] / rps['grpc']:.2f}x |"
    )
    print(
        f"| router CPU per request | {cpu['grpc'] * 1e6:.0f} µs | {cpu['http'] * 1e6:.0f} µs "
        f"| {cpu['http'] / cpu['grpc']:.2f}x |"
    )
    print(
        f"| requests/s per router core | {per_core['grpc']:.0f} | {per_core['http']:.0f} "
        f"| {per_core['http'] / per_core['grpc']:.2f}x |"
    )
    print(
        f"| router CPU per streamed message (1,000 tokens at 1 ms) "
        f"| {per_message['grpc'] * 1e6:.1f} µs | {per_message['http'] * 1e6:.1f} µs "
        f"| {per_message['http'] / per_message['grpc']:.2f}x |"
    )
    goal_cpu = "met" if cpu["http"] <= 1.5e-3 else "NOT met"
    ratio = per_core["http"] / LITELLM_RPS_PER_WORKER
    goal_rps = "met" if ratio >= 6 else "NOT met"
    print(f"goal: HTTP front CPU per request <= 1.5 ms: {cpu['http'] * 1e3:.3f} ms ({goal_cpu})")
    print(
        f"goal: requests/s per core >= 6x LiteLLM's {LITELLM_RPS_PER_WORKER:.0f}: "
        f"{per_core['http']:.0f} = {ratio:.1f}x ({goal_rps})"
    )
    print(f"logs in {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the samples")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
