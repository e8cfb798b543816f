"""`make bench-router`: `switchyard bench --compare`, model server direct vs through the router.

Starts a scripted model server (a 32-word reply, first token after 150 ms,
then one every 30 ms: a model's shape without a model's cost) and a router in
front of it, runs the bench tool against both, interleaved, and writes its
JSON and HTML report to .run/bench-router.{json,html}. This is how the sample
table in the README's "Benchmarking" section was made.

    .venv/bin/python benchmarks/bench_router_compare.py [-- extra bench options]
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

MODEL = {
    "id": "paced",
    "reply": " ".join(f"w{i}" for i in range(32)),
    "first_token_delay_ms": 150,
    "token_delay_ms": 30,
}
BENCH = ["--model", "paced", "--concurrency", "8", "--requests", "96", "--stream"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_serving(address: str) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                request = health_pb2.HealthCheckRequest()
                if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    sys.exit(f"{address} never became SERVING")


def _start(work: Path, module: str, config: Mapping[str, object]) -> subprocess.Popen[bytes]:
    path = work / f"{module}.yaml"
    path.write_text(yaml.safe_dump(config))
    with (work / f"{module}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(path)], stdout=log, stderr=log
        )


def main() -> int:
    extra = [a for a in sys.argv[1:] if a != "--"]
    out = Path(".run")
    out.mkdir(exist_ok=True)
    server_address = f"127.0.0.1:{_free_port()}"
    router_address = f"127.0.0.1:{_free_port()}"
    processes = []
    with tempfile.TemporaryDirectory() as work:
        try:
            processes.append(
                _start(
                    Path(work),
                    "switchyard_modelserver",
                    {"listen": server_address, "backend": {"kind": "scripted", "models": [MODEL]}},
                )
            )
            _wait_serving(server_address)
            router = {
                "listen": router_address,
                "clusters": {"pool": {"endpoints": [server_address]}},
                "routes": [{"model": "paced", "targets": [{"cluster": "pool"}]}],
            }
            processes.append(_start(Path(work), "switchyard_router", router))
            _wait_serving(router_address)
            command = [str(Path(sys.executable).with_name("switchyard")), "bench"]
            command += ["--target", server_address, "--compare", router_address, *BENCH]
            command += ["--json", str(out / "bench-router.json")]
            command += ["--report", str(out / "bench-router.html"), *extra]
            print("$ switchyard", " ".join(command[1:]), flush=True)
            return subprocess.run(command, check=False).returncode
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(30)


if __name__ == "__main__":
    sys.exit(main())
