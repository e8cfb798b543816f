"""What the benchmark scripts share: ports, server processes, readiness, CPU time."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

TICKS = os.sysconf("SC_CLK_TCK")
SMOKE_HELP = "one short round, to check the script still runs (make test runs every one so)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(address: str, timeout: float = 60.0) -> None:
    """Waits until the server's overall health is SERVING; exits the script if it never is."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    sys.exit(f"{address} never became SERVING")


def start(
    work: Path, name: str, module: str, config: Mapping[str, object]
) -> subprocess.Popen[bytes]:
    """Starts ``python -m module --config work/name.yaml``, logging to work/name.log."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(config)))
    with (work / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(processes: Iterable[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM to every process still running, then waits for each (killed after
    ``timeout`` seconds): the servers drain and write their last log lines."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q < 1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def relay_streams(
    stub: Any,
    request: Any,
    count: int,
    concurrency: int,
    metadata: Sequence[tuple[str, str]] = (),
) -> int:
    """Runs ``count`` StreamGenerate calls of ``request``, ``concurrency`` at a time, to
    the end; returns the messages received."""
    messages = 0
    remaining = count

    async def worker() -> None:
        nonlocal messages, remaining
        while remaining > 0:
            remaining -= 1
            async for _ in stub.StreamGenerate(request, metadata=metadata):
                messages += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return messages
