"""Deadlines, cancellation and the bounded queue: the engine stops, the model frees up."""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_modelserver, start_router
from fleet import access_lines, wait_access_lines
from processes import ServerProcess

from switchyard import (
    APIError,
    AsyncClient,
    Client,
    DeadlineExceededError,
    FinishReason,
    RateLimitError,
)
from switchyard_modelserver.serving.status_boundary import status_boundary
from switchyard_modelserver.telemetry.request_telemetry import RequestTelemetry

LONG = 3000  # tokens: ~10 s of work on the slow model, far past any deadline used here
DEADLINE = 3.0  # seconds: tokens are flowing by then, however busy the machine
# A follow-up's timeout is generous: whether the first generation stopped is read
# from the model server's log (its tokens), not from how fast the next one ran.
FOLLOW_UP = 60.0


@pytest.fixture
def slow_router(
    workdir: Path, slow_server: ServerProcess, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    server = start_router(
        workdir,
        f"router-{request.node.name}",
        {
            "clusters": {"cpu": {"endpoints": [slow_server.address]}},
            "routes": [{"model": "tiny-slow", "targets": [{"cluster": "cpu"}]}],
        },
    )
    yield server
    server.stop()


@pytest.mark.parametrize("via", ["direct", "router"])
def test_deadline_mid_generation_is_deadline_exceeded_and_generation_stops(
    via: str, slow_server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    target = slow_server if via == "direct" else request.getfixturevalue("slow_router")
    with Client(target.address, max_retries=0) as client:
        with pytest.raises(DeadlineExceededError):
            for _ in client.stream(
                "tiny-slow", "hello", max_tokens=LONG, temperature=0, timeout=DEADLINE
            ):
                pass
        result = client.generate("tiny-slow", "hello", max_tokens=4, timeout=FOLLOW_UP)
    assert result.usage.completion_tokens == 4
    # The first generation stopped at the deadline, mid-way, not after its LONG tokens.
    first = wait_access_lines(slow_server, 2)[0]
    assert first["code"] in {"DEADLINE_EXCEEDED", "CANCELLED"}
    assert 0 < int(first["completion_tokens"]) < LONG


def test_unary_deadline_is_deadline_exceeded(slow_server: ServerProcess) -> None:
    with Client(slow_server.address, max_retries=0) as client:
        with pytest.raises(DeadlineExceededError):
            client.generate("tiny-slow", "hello", max_tokens=LONG, temperature=0, timeout=DEADLINE)
        follow_up = client.generate("tiny-slow", "hello", max_tokens=2, timeout=FOLLOW_UP)
        assert follow_up.usage.completion_tokens == 2
    first = wait_access_lines(slow_server, 2)[0]
    assert int(first["completion_tokens"]) < LONG


@pytest.mark.parametrize("via", ["direct", "router"])
def test_cancelling_a_stream_frees_the_model_at_once(
    via: str, slow_server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    target = slow_server if via == "direct" else request.getfixturevalue("slow_router")
    with Client(target.address) as client:
        with client.stream("tiny-slow", "hello", max_tokens=LONG, temperature=0) as stream:
            for received, _ in enumerate(stream, start=1):
                if received == 3:
                    break  # leaving the `with` block cancels the RPC
        result = client.generate("tiny-slow", "hello", max_tokens=4, timeout=FOLLOW_UP)
    assert result.finish_reason is FinishReason.LENGTH
    first = wait_access_lines(slow_server, 2)[0]
    assert first["code"] == "CANCELLED"
    assert int(first["completion_tokens"]) < LONG


async def test_full_queue_is_resource_exhausted_with_retry_info(workdir: Path) -> None:
    server = start_modelserver(
        workdir,
        "queue-modelserver",
        {
            "max_queue_per_model": 1,
            "queue_retry_after_seconds": 2.5,
            "backend": {
                "kind": "scripted",
                "models": [
                    {"id": "drip", "reply": "a b c d e f", "token_delay_ms": 300, "concurrency": 1}
                ],
            },
        },
    )
    try:
        async with AsyncClient(server.address, max_retries=0) as client:
            running = client.stream("drip", "x")
            await anext(running)  # holds the only slot

            async def attempt() -> str:
                try:
                    return "".join([c.text async for c in client.stream("drip", "x")])
                except RateLimitError as error:
                    assert error.retry_after == pytest.approx(2.5)
                    assert error.reason == "QUEUE_FULL"
                    return "rejected"

            results = await asyncio.gather(attempt(), attempt())
            await running.aclose()
        # One waits in the queue and is served; the other finds it full.
        assert sorted(results) == ["a b c d e f", "rejected"]
    finally:
        server.stop()


def test_cancelling_during_a_long_prompt_frees_the_model(slow_server: ServerProcess) -> None:
    long_prompt = "hello world " * 1400  # ~2,800 tokens: ~2.5 s of prompt processing here
    with Client(slow_server.address, max_retries=0) as client:
        # What the whole prompt costs on this machine now (another text of the same
        # length, so that llama.cpp's prompt cache cannot serve the next one).
        client.generate("tiny-slow", "world hello " * 1400, max_tokens=1, timeout=FOLLOW_UP)
        whole_prompt_ms = float(wait_access_lines(slow_server, 1)[0]["ttft_ms"])
        with pytest.raises(DeadlineExceededError):
            client.generate(
                "tiny-slow", long_prompt, max_tokens=8, timeout=whole_prompt_ms / 10_000
            )
        result = client.generate("tiny-slow", "hello", max_tokens=1, timeout=FOLLOW_UP)
    assert result.usage.completion_tokens == 1
    _, cancelled, after = wait_access_lines(slow_server, 3)
    assert cancelled["code"] in {"DEADLINE_EXCEEDED", "CANCELLED"}  # whichever side saw it first
    # Prompt processing stops between chunks: the next request waited a chunk at
    # most, not for the rest of the prompt (relative to its cost measured above).
    assert float(after["ttft_ms"]) < whole_prompt_ms / 2


def test_sigterm_cancels_generations_still_running_after_the_grace_period(
    workdir: Path, models_dir: Path
) -> None:
    directory = workdir / "grace-models"
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    server = start_modelserver(
        workdir,
        "grace-modelserver",
        {
            "drain_grace_seconds": 1,
            "backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1},
        },
    )
    try:
        with Client(server.address, max_retries=0) as client:
            stream = client.stream("tiny-slow", "hello", max_tokens=LONG, temperature=0)
            next(stream)
            server.signal(signal.SIGTERM)
            # Exits after the 1 s grace period, not after the generation: the
            # generation's own record says it was cut off, long before its LONG tokens.
            assert server.process.wait(timeout=FOLLOW_UP) == 0
            with pytest.raises(APIError):
                list(stream)
    finally:
        server.stop()
    assert "grace period over; cancelling 1 requests" in server.log()
    [generation] = access_lines(server)
    assert generation["code"] == "CANCELLED"
    assert int(generation["completion_tokens"]) < LONG


async def test_a_write_that_finds_the_call_ended_is_counted_cancelled_not_internal() -> None:
    """A caller that cancels while a message is being written: grpc.aio's write fails
    (ExecuteBatchError) an instant before ``context.done()`` says the call ended. That
    is the caller leaving, not a server fault: counted CANCELLED, never INTERNAL (seen on
    CI through the router). In process, with grpc's own error: the interleaving cannot be
    forced across processes."""
    # grpc's own error type (grpc ships no types for its Cython core).
    execute_batch_error: type[Exception] = importlib.import_module(
        "grpc._cython.cygrpc"
    ).ExecuteBatchError

    class EndedCall:
        """What a handler's context looks like in that instant."""

        def done(self) -> bool:
            return False

        def time_remaining(self) -> float | None:
            return None

    telemetry = RequestTelemetry("StreamGenerate")
    with pytest.raises(execute_batch_error):
        async with status_boundary(EndedCall(), telemetry):  # type: ignore[arg-type]
            raise execute_batch_error("Failed 'execute_batch'")
    assert telemetry.code == "CANCELLED"
