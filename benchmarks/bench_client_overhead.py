"""How much CPU does `switchyard bench` spend per request, against the SDK's AsyncClient?

The bench must not be the bottleneck of what it measures. This starts one
scripted model server (no model cost, a 32-word reply) and, in this process,
sends the same requests through the bench's sender (generated method paths,
pre-serialised request bytes) and through the SDK's AsyncClient, in
alternating rounds at concurrency 32, on uvloop and on plain asyncio. It prints
the client's CPU per request (this process, grpc's threads included), medians
over the rounds.

    .venv/bin/python benchmarks/bench_client_overhead.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import uvloop
import yaml
from harness import SMOKE_HELP, free_port, wait_serving

from switchyard import AsyncClient
from switchyard.bench.load import LoadConfig, RequestSender, request_payloads
from switchyard.bench.progress import LiveCounters
from switchyard.bench.prompts import Prompt

PROMPT = "Continue this text: the river city train signal station morning light"
CONCURRENCY = 32


async def _cpu_per_request(send: Callable[[], Awaitable[None]], requests: int) -> float:
    """Client CPU seconds per request for ``requests`` sends at CONCURRENCY."""
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            await send()

    before = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - before) / requests


async def _measure(address: str, rounds: int, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    for stream in (False, True):
        config = LoadConfig(model="words", prompts=[Prompt(PROMPT)], stream=stream)
        channel = grpc.aio.insecure_channel(address)
        sender = RequestSender(channel, request_payloads(config), config, 0.0, LiveCounters())
        async with AsyncClient(address, max_retries=0) as client:

            async def bench_send(sender: RequestSender = sender) -> None:
                await sender.send(0, 0.0)

            async def sdk_send(client: AsyncClient = client, stream: bool = stream) -> None:
                if stream:
                    async for _ in client.stream("words", PROMPT, max_tokens=128):
                        pass
                else:
                    await client.generate("words", PROMPT, max_tokens=128)

            kind = "stream" if stream else "unary"
            await _cpu_per_request(bench_send, 200)  # warm-up
            await _cpu_per_request(sdk_send, 200)
            for _ in range(rounds):
                for name, send in (("bench", bench_send), ("sdk", sdk_send)):
                    cpu = await _cpu_per_request(send, requests)
                    samples.setdefault(f"{name} {kind}", []).append(cpu)
        await channel.close(grace=None)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args()
    rounds, requests = (1, 64) if args.smoke else (3, 300) if args.quick else (6, 1000)
    with tempfile.TemporaryDirectory() as work:
        config = Path(work) / "modelserver.yaml"
        reply = " ".join(f"word{i}" for i in range(32))
        config.write_text(
            yaml.safe_dump(
                {"backend": {"kind": "scripted", "models": [{"id": "words", "reply": reply}]}}
            )
        )
        address = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "switchyard_modelserver",
                "--config",
                str(config),
                "--listen",
                address,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_serving(address)
            results = {
                "uvloop": uvloop.run(_measure(address, rounds, requests)),
                "asyncio": asyncio.run(_measure(address, rounds, requests)),
            }
        finally:
            server.terminate()
            server.wait(10)
    print(f"client CPU per request (µs), medians of {rounds} rounds, concurrency {CONCURRENCY}")
    print(f"{'path':16} {'uvloop':>8} {'asyncio':>8}")
    for name in results["uvloop"]:
        cells = [statistics.median(results[loop][name]) * 1e6 for loop in results]
        print(f"{name:16} {cells[0]:8.0f} {cells[1]:8.0f}")


if __name__ == "__main__":
    main()
