"""What do replica restarts cost callers? Requests failed while the replicas of one
pool restart one after another, and how soon a restarted replica takes requests.

Scripted ``echo`` replicas (every answer is the prompt, one word per token) behind
one router with ``resume: true``; callers, half unary and half streaming, each
with a unique prompt, check every answer's text. One replica is restarted every
1.5 s, by kill -9 or by SIGTERM (it drains first), the next only once the
previous one says SERVING again on its own health service: one replica is
always up, as in a Kubernetes rolling update or a crash-looping pod. The
callers do not retry (the router alone keeps them served).

Prints, per scenario (2 replicas kill -9, 2 replicas SIGTERM, 3 replicas kill -9):
requests, failed, failed per 1,000, what the errors said, and the time from each
restarted replica's SERVING (its "ready" log line) to the start of the first
request routed to it (from its access log), p50 and max.

    .venv/bin/python benchmarks/restarts.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
import grpc.aio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import free_port, wait_serving

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

MODEL = "echo"
RESTART_EVERY_SECONDS = 1.5
WORDS = " ".join(f"w{i}" for i in range(12))


@dataclass
class Scenario:
    name: str
    replicas: int
    how: signal.Signals
    restarts: int


@dataclass
class Replica:
    """One replica's address, and each of its incarnations (process and log file)."""

    index: int
    port: int
    config: Path
    work: Path
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.work / f"replica{self.index}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "switchyard_modelserver",
                    "--config",
                    str(self.config),
                    "--listen",
                    self.address,
                    "--log-format",
                    "json",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Tally:
    requests: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what[:160]] += 1


async def _caller(
    stub: pb_grpc.LLMServiceAsyncStub,
    caller: int,
    streaming: bool,
    stop: asyncio.Event,
    tally: Tally,
) -> None:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        prompt = f"caller{caller} request{sequence} {WORDS}"
        tally.requests += 1
        try:
            if streaming:
                text = ""
                request = pb.StreamGenerateRequest(model=MODEL, prompt=prompt)
                async for response in stub.StreamGenerate(request, timeout=20):
                    text += response.text
            else:
                request_unary = pb.GenerateRequest(model=MODEL, prompt=prompt)
                text = (await stub.Generate(request_unary, timeout=20)).text
        except grpc.aio.AioRpcError as error:
            tally.fail(f"{error.code().name}: {error.details()}")
            continue
        if text != prompt:
            tally.fail(f"wrong text: {text[:60]!r}")


async def _serving(address: str) -> None:
    """Returns once the replica's own health says SERVING."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.01)


async def _restart(replica: Replica, how: signal.Signals) -> None:
    assert replica.process is not None
    replica.process.send_signal(how)
    while replica.process.poll() is None:  # noqa: ASYNC110 - a process, not a coroutine
        await asyncio.sleep(0.005)
    replica.start()
    await _serving(replica.address)


def _time(line: dict[str, object]) -> float:
    return datetime.fromisoformat(str(line["time"])).timestamp()


def _serving_to_first_request(log: Path) -> float | None:
    """Seconds from a replica's "ready" line to the start of the first request it
    served (its access line's time less the request's duration); None: none came."""
    ready = None
    for raw in log.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except json.JSONDecodeError:
            continue
        message = str(line.get("message", ""))
        if message.startswith("ready:"):
            ready = _time(line)
        elif ready is not None and message.startswith("request ") and "total_ms" in line:
            started = _time(line) - float(str(line["total_ms"])) / 1000
            return max(0.0, started - ready)
    return None


def _start_router(work: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    with (work / "router.log").open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "switchyard_router",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _scenario(work: Path, scenario: Scenario, callers: int) -> tuple[Tally, list[float]]:
    work = work / scenario.name.replace(" ", "-")
    work.mkdir()
    config = work / "replica.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "drain_grace_seconds": 10,
                "backend": {
                    "kind": "scripted",
                    "models": [{"id": MODEL, "token_delay_ms": 2, "concurrency": 256}],
                },
            }
        )
    )
    replicas = [Replica(i, free_port(), config, work) for i in range(scenario.replicas)]
    router_port = free_port()
    router_config = work / "router.yaml"
    router_config.write_text(
        yaml.safe_dump(
            {
                "access_log": False,
                "clusters": {"pool": {"endpoints": [r.address for r in replicas]}},
                "routes": [{"model": MODEL, "resume": True, "targets": [{"cluster": "pool"}]}],
            }
        )
    )
    router: subprocess.Popen[bytes] | None = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            wait_serving(replica.address)
        router = _start_router(work, router_config, router_port)
        wait_serving(f"127.0.0.1:{router_port}")
        tally = Tally()
        stop = asyncio.Event()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as channel:
            stub: pb_grpc.LLMServiceAsyncStub = pb_grpc.LLMServiceStub(channel)
            load = [
                asyncio.create_task(_caller(stub, i, i % 2 == 1, stop, tally))
                for i in range(callers)
            ]
            await asyncio.sleep(0.5)  # load runs before the first restart
            for number in range(scenario.restarts):
                began = time.monotonic()
                await _restart(replicas[number % len(replicas)], scenario.how)
                await asyncio.sleep(max(0.0, RESTART_EVERY_SECONDS - (time.monotonic() - began)))
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*load)
        gaps = [
            gap
            for replica in replicas
            for log in replica.logs[1:]  # restarted incarnations only
            if (gap := _serving_to_first_request(log)) is not None
        ]
        return tally, gaps
    finally:
        if router is not None:
            router.terminate()
            router.wait()
        for replica in replicas:
            replica.stop()


async def run(smoke: bool, work: Path | None, only: str | None) -> None:
    restarts = 1 if smoke else 8
    callers = 8 if smoke else 32
    scenarios = [
        Scenario("2 replicas, kill -9", 2, signal.SIGKILL, restarts),
        Scenario("2 replicas, SIGTERM", 2, signal.SIGTERM, restarts),
        Scenario("3 replicas, kill -9", 3, signal.SIGKILL, restarts),
    ]
    if only is not None:
        scenarios = [s for s in scenarios if only in s.name]
    print(
        f"{callers} callers (half unary, half streaming; no client retries), one restart "
        f"every {RESTART_EVERY_SECONDS}s, {restarts} restarts per scenario"
    )
    print(
        "| scenario | requests | failed | failed per 1,000 "
        "| SERVING to first routed request p50 / max |"
    )
    print("|---|---|---|---|---|")
    errors: dict[str, collections.Counter[str]] = {}
    with tempfile.TemporaryDirectory(prefix="switchyard-restarts-") as tmp:
        for scenario in scenarios:
            tally, gaps = await _scenario(work or Path(tmp), scenario, callers)
            per_thousand = 1000 * tally.failed / max(1, tally.requests)
            if gaps:
                gap_text = f"{statistics.median(gaps) * 1e3:.0f} ms / {max(gaps) * 1e3:.0f} ms"
            else:
                gap_text = "none routed"
            print(
                f"| {scenario.name} | {tally.requests} | {tally.failed} | {per_thousand:.1f} "
                f"| {gap_text} ({len(gaps)} of {scenario.restarts}) |"
            )
            errors[scenario.name] = tally.errors
    for name, counted in errors.items():
        for what, count in counted.most_common(3):
            print(f"  {name}: {count} x {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one restart each, 8 callers")
    parser.add_argument("--work", type=Path, help="keep configs and logs in this folder")
    parser.add_argument("--only", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(args.smoke, args.work, args.only))


if __name__ == "__main__":
    main()
