"""1,000 concurrent streams on one channel through one router: what do they cost, and
what does each limit do when it is reached?

Scripted ``echo`` replicas (one word per token, 20 ms apart, 20 words) behind one
router; one client process opens every call at once on one gRPC channel (as one SDK
client does), without retries, and checks each text.

Prints, per round of streams at the router's defaults: errors, time to first token
p50 and p99, the router's CPU per stream and per relayed message, and its peak
resident memory (VmHWM; the goal is at most 150 MB). Then each limit at work, one
router each: the old per-connection default (100 streams), ``limits.max_in_flight``
at 200, and a model server that takes 50 calls per connection: what the client saw.

    .venv/bin/python benchmarks/concurrent_streams.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from harness import cpu_seconds, free_port, percentile, start, stop, wait_serving

from switchyard import APIError, AsyncClient
from switchyard.status import parse_details, refused_stream
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

WORDS = " ".join(f"w{i}" for i in range(19))  # 20 words with the call's number


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Outcomes:
    """What the client saw of one round."""

    def __init__(self) -> None:
        self.answered = 0
        self.messages = 0
        self.ttfts: list[float] = []
        self.errors: collections.Counter[str] = collections.Counter()

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> str:
        said = "; ".join(f"{count} {what}" for what, count in self.errors.most_common(3))
        return f"{self.answered} answered" + (f", {said}" if said else "")


async def _round(stub: pb_grpc.LLMServiceAsyncStub, calls: int, streams_only: bool) -> Outcomes:
    seen = Outcomes()

    async def one(index: int) -> None:
        prompt = f"c{index} {WORDS}"
        started = time.perf_counter()
        text = ""
        try:
            if streams_only or index % 2:
                request = pb.StreamGenerateRequest(model="echo", prompt=prompt)
                async for response in stub.StreamGenerate(request, timeout=120):
                    if not text:
                        seen.ttfts.append(time.perf_counter() - started)
                    text += response.text
                    seen.messages += 1
            else:
                unary = pb.GenerateRequest(model="echo", prompt=prompt)
                text = (await stub.Generate(unary, timeout=120)).text
        except grpc.aio.AioRpcError as error:
            if refused_stream(error.code().name, error.details()):
                reason: str | None = "REFUSED_STREAM"
            else:
                reason = parse_details(error.trailing_metadata()).reason
            seen.errors[f"{error.code().name} {reason or (error.details() or '')[:40]}"] += 1
            return
        if text == prompt:
            seen.answered += 1
        else:
            seen.errors["wrong text"] += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    return seen


async def _sdk_round(router: str, calls: int) -> Outcomes:
    """Streams through one SDK client (one channel; it resends refused calls)."""
    seen = Outcomes()
    async with AsyncClient(router, max_retries=0, timeout=120) as client:

        async def one(index: int) -> None:
            prompt = f"c{index} {WORDS}"
            try:
                text = "".join([chunk.text async for chunk in client.stream("echo", prompt)])
            except APIError as error:
                seen.errors[f"{error.code.name} {error.reason or error.message[:40]}"] += 1
                return
            seen.answered += text == prompt

        await asyncio.gather(*(one(i) for i in range(calls)))
    return seen


class Fleet:
    """Replicas and routers of one run, stopped at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[bytes]] = []

    def replica(self, name: str, **settings: Any) -> str:
        address = f"127.0.0.1:{free_port()}"
        model = {"id": "echo", "token_delay_ms": 20, "concurrency": 2000}
        config = {"listen": address, "backend": {"kind": "scripted", "models": [model]}}
        self.processes.append(start(self.work, name, "switchyard_modelserver", config | settings))
        wait_serving(address)
        return address

    def router(self, name: str, replicas: list[str], **settings: Any) -> tuple[str, int]:
        address = f"127.0.0.1:{free_port()}"
        config = {
            "listen": address,
            "clusters": {"pool": {"endpoints": replicas}},
            "routes": [{"model": "echo", "targets": [{"cluster": "pool"}]}],
            **settings,
        }
        process = start(self.work, name, "switchyard_router", config)
        self.processes.append(process)
        wait_serving(address)
        return address, process.pid

    def stop(self) -> None:
        stop(self.processes)


async def _connections(router: str) -> int:
    async with grpc.aio.insecure_channel(router) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        response = await stub.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=5)
    return sum(e.connections for e in response.endpoints)


async def _cost(fleet: Fleet, replicas: list[str], calls: int, rounds: int) -> None:
    router, pid = fleet.router("router", replicas)
    print(
        f"{calls:,} concurrent streams on one channel through one router at its defaults "
        "(20 tokens 20 ms apart, two scripted replicas)"
    )
    print(
        "| round | errors | TTFT p50 | TTFT p99 | router CPU per stream "
        "| router CPU per relayed message | router peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    async with grpc.aio.insecure_channel(router) as channel:
        stub: pb_grpc.LLMServiceAsyncStub = pb_grpc.LLMServiceStub(channel)
        await _round(stub, 10, True)  # connections up, code paths warm
        for number in range(1, rounds + 1):
            cpu_before = cpu_seconds(pid)
            seen = await _round(stub, calls, True)
            cpu = cpu_seconds(pid) - cpu_before
            p50 = percentile(seen.ttfts, 0.5) * 1e3 if seen.ttfts else float("nan")
            p99 = percentile(seen.ttfts, 0.99) * 1e3 if seen.ttfts else float("nan")
            print(
                f"| {number} | {seen.failed} | {p50:.1f} ms | {p99:.1f} ms "
                f"| {cpu / calls * 1e6:.0f} µs "
                f"| {cpu / max(1, seen.messages) * 1e6:.1f} µs ({seen.messages:,} messages) "
                f"| {_peak_rss_mb(pid):.0f} MB |"
            )


async def _limits(fleet: Fleet, replicas: list[str], calls: int) -> None:
    limited = fleet.replica("limited", limits={"max_concurrent_streams": 50})
    cases = [
        (
            f"router limits.max_concurrent_streams: 100 (the old default), {calls:,} streams",
            replicas,
            {"limits": {"max_concurrent_streams": 100}},
            True,
        ),
        (
            f"the same, {calls:,} streams through one SDK client (it resends refused calls)",
            replicas,
            {"limits": {"max_concurrent_streams": 100}},
            None,
        ),
        (
            f"router limits.max_in_flight: 200, {calls:,} calls (half streams)",
            replicas,
            {"limits": {"max_in_flight": 200}},
            False,
        ),
        (
            f"a model server taking 50 calls per connection, {calls * 3 // 10:,} calls",
            [limited],
            {},
            False,
        ),
    ]
    print()
    print("Each limit reached (one router each; no client retries):")
    print("| limit | what the client saw | router connections to model servers | peak RSS |")
    print("|---|---|---|---|")
    for index, (name, upstream, settings, streams_only) in enumerate(cases):
        router, pid = fleet.router(f"router-limit{index}", upstream, **settings)
        count = calls * 3 // 10 if upstream == [limited] else calls
        async with grpc.aio.insecure_channel(router) as channel:
            stub: pb_grpc.LLMServiceAsyncStub = pb_grpc.LLMServiceStub(channel)
            await _round(stub, 2, True)  # connected
            if streams_only is None:
                seen = await _sdk_round(router, count)
            else:
                seen = await _round(stub, count, streams_only)
        connections = await _connections(router)
        print(f"| {name} | {seen.summary()} | {connections} | {_peak_rss_mb(pid):.0f} MB |")


async def run(smoke: bool) -> None:
    calls, rounds = (100, 1) if smoke else (1000, 3)
    with tempfile.TemporaryDirectory(prefix="switchyard-streams-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            replicas = [fleet.replica("a"), fleet.replica("b")]
            await _cost(fleet, replicas, calls, rounds)
            await _limits(fleet, replicas, calls)
        finally:
            fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one round of 100 calls")
    asyncio.run(run(parser.parse_args().smoke))


if __name__ == "__main__":
    main()
