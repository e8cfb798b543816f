"""Benchmarks cannot rot: every script under benchmarks/ runs once in its smoke mode
(one short round) and prints its table. Nothing here judges the numbers: speed is
measured by running the scripts in full, not by the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Modules the scripts share or start, not benchmarks of their own: the bare relay
# is router_overhead.py's "floor" row, checked there.
HELPERS = {"harness.py", "bare_grpc_proxy.py"}
# Each script, and lines its table must print (header and the rows that show each
# path ran).
TABLES: dict[str, list[str]] = {
    "router_overhead.py": [
        "| measure | direct | router | router adds / costs |",
        "| unary latency p50, concurrency 1 |",
        "| the floor: a bare grpc.aio byte relay, concurrency 32 |",
        "| 1,000-token streams (1 token/ms), tokens/s; messages/stream |",
        "| kill -9 to out of rotation |",
    ],
    "router_auth_overhead.py": [
        "| measure | no auth | auth + rate limits | difference |",
        "| router CPU per relayed stream message |",
        "in-process auth work per request (10 keys configured):",
    ],
    "concurrent_streams.py": [
        "| round | errors | TTFT p50 | TTFT p99 | router CPU per stream |",
        "| 1 |",
    ],
    "restarts.py": [
        "| scenario | requests | failed | failed per 1,000 |",
        "| 2 replicas, kill -9 |",
        "| 2 replicas, SIGTERM |",
        "| 3 replicas, kill -9 |",
    ],
    "fleet_overhead.py": [
        "| measure | plain (no auth) | local limits | Redis limits |",
        "| router CPU per request, concurrency 16 |",
        "| Redis CPU per request |",
        "| response cache | latency p50 | latency p99 | router CPU per request |",
        "| memory hit |",
        "| Redis miss |",
    ],
    "http_front.py": [
        "| measure | gRPC path | HTTP front | HTTP / gRPC |",
        "| unary latency p50, concurrency 1 (added over direct) |",
        "| router CPU per request |",
        "| requests/s per router core |",
        "| router CPU per streamed message (1,000 tokens at 1 ms) |",
        "goal: HTTP front CPU per request <= 1.5 ms:",
    ],
    "http_servers.py": [
        "| server (embedded in a uvloop loop) | requests/s | CPU µs/request | CPU µs/event |",
        "| granian |",
        "| uvicorn |",
        "| aiohttp |",
    ],
    "bench_client_overhead.py": ["client CPU per request (µs)", "path", "uvloop"],
    "bench_router_compare.py": ["ratio #2/#1", "requests/s", "TTFT p50 ms"],
    "llamacpp_overhead.py": [
        "|  TTFT p50 | tokens/s p50 | vs in-process |",
        "| in-process ",
        "| router (gRPC) ",
        "| llama_cpp.server (SSE) ",
    ],
    "model_lifecycle.py": [
        "| llamacpp | TTFT, model loaded (ms) ",
        "| llamacpp | TTFT, model unloaded: load + first token (ms) ",
        "| llamacpp | unload + load cycle (ms) ",
        "| llamacpp | tokens/s, with the LoRA adapter ",
        "| vllm | base, 1 stream ",
        "| vllm | adapter, 8 streams ",
    ],
    "vllm_overhead.py": [
        "| path                 | conc | TTFT p50 | tokens/s | vs vllm serve |",
        "| vllm serve (SSE)     |    8 |",
        "| modelserver (gRPC)   |    8 |",
    ],
}


# Scripts whose smoke run is checked in detail by a test of its own.
ELSEWHERE = {
    "picker_cost.py": "tests/test_bench.py (every policy and route size)",
    "routing.py": "tests/test_bench.py (every policy in each of its tables)",
    "idle_sweep_cost.py": "tests/test_bench.py (steady and after a burst)",
}


def test_every_benchmark_script_has_a_smoke_run() -> None:
    scripts = {path.name for path in BENCHMARKS.glob("*.py")} - HELPERS
    covered = set(TABLES) | set(ELSEWHERE)
    assert scripts == covered, "a new benchmark needs a --smoke mode and an entry here"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("script", sorted(TABLES))
def test_a_benchmark_runs_in_smoke_mode_and_prints_its_table(script: str, tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        cwd=tmp_path,  # anything a script writes beside it stays out of the repository
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = finished.stdout
    assert finished.returncode == 0, f"{output[-2000:]}\n{finished.stderr[-4000:]}"
    for line in TABLES[script]:
        assert line in output, f"{line!r} not in:\n{output}"
