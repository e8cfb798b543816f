"""`make bench-router`: `switchyard bench --compare`, model server direct vs through the router.

Starts a scripted model server (a 32-word reply, first token after 150 ms,
then one every 30 ms: a model's shape without a model's cost) and a router in
front of it, runs the bench tool against both, interleaved, and writes its
JSON and HTML report to .run/bench-router.{json,html}. This is how the sample
table in the README's "Benchmarking" section was made.

    .venv/bin/python benchmarks/bench_router_compare.py [--smoke] [-- extra bench options]

With --smoke: 16 requests in 2 rounds, the JSON and report in a temporary folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import free_port, start, wait_serving

MODEL = {
    "id": "paced",
    "reply": " ".join(f"w{i}" for i in range(32)),
    "first_token_delay_ms": 150,
    "token_delay_ms": 30,
}
BENCH = ["--model", "paced", "--concurrency", "8", "--stream"]


def main() -> int:
    smoke = "--smoke" in sys.argv[1:]  # see harness.SMOKE_HELP
    extra = [a for a in sys.argv[1:] if a not in ("--", "--smoke")]
    load = ["--requests", "16", "--rounds", "2"] if smoke else ["--requests", "96"]
    out = Path(tempfile.mkdtemp(prefix="bench-router-")) if smoke else Path(".run")
    out.mkdir(exist_ok=True)
    server_address = f"127.0.0.1:{free_port()}"
    router_address = f"127.0.0.1:{free_port()}"
    processes = []
    with tempfile.TemporaryDirectory() as work:
        try:
            processes.append(
                start(
                    Path(work),
                    "switchyard_modelserver",
                    "switchyard_modelserver",
                    {"listen": server_address, "backend": {"kind": "scripted", "models": [MODEL]}},
                )
            )
            wait_serving(server_address)
            router = {
                "listen": router_address,
                "clusters": {"pool": {"endpoints": [server_address]}},
                "routes": [{"model": "paced", "targets": [{"cluster": "pool"}]}],
            }
            processes.append(start(Path(work), "switchyard_router", "switchyard_router", router))
            wait_serving(router_address)
            command = [str(Path(sys.executable).with_name("switchyard")), "bench"]
            command += ["--target", server_address, "--compare", router_address, *BENCH, *load]
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
