"""What does the router add? Direct to a model server vs through the router.

Scripted backend (no model cost), one process each, interleaved where it
matters, on this machine's cores (client, router and model server share them).
Prints, for direct and router paths side by side:

  unary latency p50/p99 at concurrency 1, and what the router adds
  requests/s at concurrency 32, and router CPU per request
  1,000-token streams: tokens/s, messages per stream, router CPU per relayed token
      (twice: tokens as fast as possible, so the model server coalesces them, and
      one token per millisecond, so nearly every token is its own message)
  time to first token added by the router
  time from a replica's kill -9 until the router takes it out of rotation

    .venv/bin/python benchmarks/router_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
import grpc.aio
import yaml
from harness import SMOKE_HELP, cpu_seconds, free_port, percentile, stop, wait_serving

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

_T = TypeVar("_T")
TICKS = os.sysconf("SC_CLK_TCK")
WORDS_1000 = "word " * 1000


class _Processes:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, module: str, config: dict[str, object]) -> subprocess.Popen[bytes]:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        # Default log level: the router's cost includes its one INFO line per request.
        return self.spawn(name, ["-m", module, "--config", str(path)])

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Starts ``python ARGS`` with its output in NAME.log (stopped at the end)."""
        with (self.work / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT
            )
        self.procs.append(process)
        return process

    def stop(self) -> None:
        stop(self.procs)


async def _unary_latency(
    stubs: dict[str, pb_grpc.LLMServiceAsyncStub], n: int
) -> dict[str, list[float]]:
    request = pb.GenerateRequest(model="ok", prompt="x")
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    for stub in stubs.values():  # warm-up
        for _ in range(50):
            await stub.Generate(request)
    for _ in range(n):
        for name, stub in stubs.items():  # interleaved
            start = time.perf_counter()
            await stub.Generate(request)
            samples[name].append(time.perf_counter() - start)
    return samples


async def _throughput(stub: pb_grpc.LLMServiceAsyncStub, seconds: float, concurrency: int) -> int:
    request = pb.GenerateRequest(model="ok", prompt="x")
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await stub.Generate(request)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def _streams(
    stub: pb_grpc.LLMServiceAsyncStub, model: str, count: int, concurrency: int
) -> tuple[int, int, float]:
    """(tokens, messages, seconds) for ``count`` streams of ``model``."""
    tokens = messages = 0
    remaining = count
    request = pb.StreamGenerateRequest(model=model, prompt="x")

    async def worker() -> None:
        nonlocal tokens, messages, remaining
        while remaining > 0:
            remaining -= 1
            async for response in stub.StreamGenerate(request):
                messages += 1
                if response.usage.completion_tokens:
                    tokens += response.usage.completion_tokens

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens, messages, time.perf_counter() - start


async def _first_token(
    stubs: dict[str, pb_grpc.LLMServiceAsyncStub], n: int
) -> dict[str, list[float]]:
    request = pb.StreamGenerateRequest(model="ok", prompt="x")
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    for _ in range(n):
        for name, stub in stubs.items():
            start = time.perf_counter()
            call = stub.StreamGenerate(request)
            async for _ in call:
                samples[name].append(time.perf_counter() - start)
                break
            call.cancel()
    return samples


async def _measured(pid: int, work: Awaitable[_T]) -> tuple[_T, float]:
    """The result of ``work`` and the CPU seconds process ``pid`` used meanwhile."""
    before = cpu_seconds(pid)
    result = await work
    return result, cpu_seconds(pid) - before


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="switchyard-router-bench-"))
    processes = _Processes(work)
    server_port, router_port, spare_port = free_port(), free_port(), free_port()
    models = [
        {"id": "ok", "reply": "ok", "concurrency": 256},
        {"id": "fast1000", "reply": WORDS_1000, "concurrency": 256},
        {"id": "paced1000", "reply": WORDS_1000, "token_delay_ms": 1, "concurrency": 256},
    ]
    try:
        processes.start(
            "modelserver",
            "switchyard_modelserver",
            {"listen": f"127.0.0.1:{server_port}", "max_queue_per_model": 1024,
             "backend": {"kind": "scripted", "models": models}},
        )  # fmt: skip
        spare_config = {"kind": "scripted", "models": models}
        processes.start(
            "spare",
            "switchyard_modelserver",
            {"listen": f"127.0.0.1:{spare_port}", "backend": spare_config},
        )
        wait_serving(f"127.0.0.1:{server_port}")
        wait_serving(f"127.0.0.1:{spare_port}")
        router = processes.start(
            "router",
            "switchyard_router",
            {
                "listen": f"127.0.0.1:{router_port}",
                "access_log": os.environ.get("ROUTER_ACCESS_LOG", "true") == "true",
                "clusters": {
                    "main": {"endpoints": [f"127.0.0.1:{server_port}"]},
                    "spare": {"endpoints": [f"127.0.0.1:{spare_port}"]},
                },
                "routes": [
                    *({"model": m["id"], "targets": [{"cluster": "main"}]} for m in models),
                    {"model": "spare", "targets": [{"cluster": "spare", "model": "ok"}]},
                ],
            },
        )
        wait_serving(f"127.0.0.1:{router_port}")
        bare_port = free_port()
        bare = processes.spawn(
            "bare",
            [
                str(Path(__file__).with_name("bare_grpc_proxy.py")),
                f"127.0.0.1:{bare_port}",
                f"127.0.0.1:{server_port}",
            ],
        )
        direct = grpc.aio.insecure_channel(f"127.0.0.1:{server_port}")
        routed = grpc.aio.insecure_channel(f"127.0.0.1:{router_port}")
        stubs = {"direct": pb_grpc.LLMServiceStub(direct), "router": pb_grpc.LLMServiceStub(routed)}
        scale = 0.01 if args.smoke else 0.25 if args.quick else 1.0

        latency = await _unary_latency(stubs, int(2000 * scale))
        rps: dict[str, float] = {}
        seconds = 5 * scale
        rps["direct"] = await _throughput(stubs["direct"], seconds, 32) / seconds
        count, cpu = await _measured(router.pid, _throughput(stubs["router"], seconds, 32))
        rps["router"] = count / seconds
        cpu_per_request = cpu / count
        bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}")
        bare_stub = pb_grpc.LLMServiceStub(bare_channel)
        # It has no health service: wait until it listens (a busy machine starts it late).
        await asyncio.wait_for(bare_channel.channel_ready(), 60)
        await _throughput(bare_stub, 0.5, 32)  # warm-up
        bare_count, bare_cpu = await _measured(bare.pid, _throughput(bare_stub, seconds, 32))
        await bare_channel.close(grace=None)
        streams = max(4, int(40 * scale))
        stream_rows = []
        for model in ("fast1000", "paced1000"):
            row: dict[str, tuple[float, float, float]] = {}
            for name, stub in stubs.items():
                (tokens, messages, elapsed), cpu = await _measured(
                    router.pid, _streams(stub, model, streams, 4)
                )
                per_token = cpu / tokens if name == "router" else 0.0
                row[name] = (tokens / elapsed, messages / streams, per_token)
            stream_rows.append((model, row))
        ttft = await _first_token(stubs, int(500 * scale))

        # kill -9 the spare's model server; time until the router marks it unreachable.
        admin = admin_grpc.RouterAdminServiceStub(routed)
        spare = processes.procs[1]
        killed = time.perf_counter()
        spare.kill()
        removal = None
        while time.perf_counter() - killed < 10:
            status = await admin.ListEndpoints(admin_pb.ListEndpointsRequest())
            state = {e.address: e.state for e in status.endpoints}[f"127.0.0.1:{spare_port}"]
            if state != admin_pb.ENDPOINT_STATE_HEALTHY:
                removal = time.perf_counter() - killed
                break
            await asyncio.sleep(0.001)
        await direct.close(grace=None)
        await routed.close(grace=None)
    finally:
        processes.stop()

    def ms(value: float) -> str:
        return f"{value * 1e3:.3f} ms"

    d50, d99 = percentile(latency["direct"], 0.5), percentile(latency["direct"], 0.99)
    r50, r99 = percentile(latency["router"], 0.5), percentile(latency["router"], 0.99)
    cpus = os.cpu_count()
    print(f"scripted backend, {cpus} CPUs shared by client, router and server (logs in {work})")
    print("| measure | direct | router | router adds / costs |")
    print("|---|---|---|---|")
    print(f"| unary latency p50, concurrency 1 | {ms(d50)} | {ms(r50)} | +{ms(r50 - d50)} |")
    print(f"| unary latency p99, concurrency 1 | {ms(d99)} | {ms(r99)} | +{ms(r99 - d99)} |")
    print(
        f"| requests/s, concurrency 32 | {rps['direct']:.0f} | {rps['router']:.0f} "
        f"| {rps['router'] / rps['direct']:.2f}x; "
        f"router CPU {cpu_per_request * 1e6:.0f} µs/request |"
    )
    print(
        f"| the floor: a bare grpc.aio byte relay, concurrency 32 | | {bare_count / seconds:.0f} "
        f"| CPU {bare_cpu / bare_count * 1e6:.0f} µs/request |"
    )
    for model, row in stream_rows:
        label = "fast" if model == "fast1000" else "1 token/ms"
        (dt, dm, _), (rt, rm, cpu_tok) = row["direct"], row["router"]
        print(
            f"| 1,000-token streams ({label}), tokens/s; messages/stream | {dt:.0f}; {dm:.0f} "
            f"| {rt:.0f}; {rm:.0f} | router CPU {cpu_tok * 1e6:.2f} µs/token |"
        )
    t_direct, t_router = statistics.median(ttft["direct"]), statistics.median(ttft["router"])
    added = ms(t_router - t_direct)
    print(f"| time to first token p50 | {ms(t_direct)} | {ms(t_router)} | +{added} |")
    removal_text = "not seen in 10 s" if removal is None else ms(removal)
    print(f"| kill -9 to out of rotation | | {removal_text} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the samples")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
