"""Model server lifecycle: health while loading, per-model health, draining on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import start_modelserver
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import ServerProcess, health_status

from switchyard import Client, FinishReason, UnavailableError
from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _wait_reachable(server: ServerProcess) -> None:
    deadline = time.monotonic() + 30
    while health_status(server.address) == "UNREACHABLE":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)


def test_health_is_not_serving_while_models_load(workdir: Path) -> None:
    server = start_modelserver(
        workdir,
        "loading-modelserver",
        {"backend": {"kind": "scripted", "models": [{"id": "late", "load_delay_ms": 3000}]}},
        wait=False,
    )
    try:
        _wait_reachable(server)
        assert health_status(server.address) == "NOT_SERVING"
        assert health_status(server.address, "late") == "NOT_SERVING"
        with Client(server.address, max_retries=0) as client:
            [model] = client.list_models()
            assert model.status == "loading"
            with pytest.raises(UnavailableError) as caught:
                client.generate("late", "hello")
            assert caught.value.reason == "MODEL_LOADING"
            server.wait_serving()
            assert health_status(server.address, "late") == "SERVING"
            assert client.generate("late", "hello").text == "hello"
    finally:
        server.stop()


def test_health_has_one_name_per_model_and_alias(llama_server: ServerProcess) -> None:
    for name in ("", "switchyard.v1.LLMService", "tiny", "tiny-alias", "tiny-slow"):
        assert health_status(llama_server.address, name) == "SERVING", name
    assert health_status(llama_server.address, "no-such-model") == "NOT_FOUND"


def test_a_model_that_fails_to_load_is_unavailable_and_the_others_serve(
    workdir: Path, models_dir: Path
) -> None:
    directory = workdir / "with-broken"
    directory.mkdir()
    (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    (directory / "broken.gguf").write_bytes(b"GGUF but not really")
    server = start_modelserver(
        workdir,
        "broken-modelserver",
        {"backend": {"kind": "llamacpp", "models_dir": str(directory)}},
    )
    try:
        assert health_status(server.address, "broken") == "NOT_SERVING"
        with Client(server.address, max_retries=0) as client:
            statuses = {m.id: m.status for m in client.list_models()}
            assert statuses == {"broken": "unavailable", "tiny": "ready"}
            with pytest.raises(UnavailableError) as caught:
                client.generate("broken", "hello")
            assert caught.value.reason == "MODEL_UNAVAILABLE"
            assert client.generate("tiny", "hello", max_tokens=2).usage.completion_tokens == 2
    finally:
        server.stop()


def test_sigterm_turns_health_not_serving_and_drains_in_flight_streams(workdir: Path) -> None:
    server = start_modelserver(
        workdir,
        "draining-modelserver",
        {
            "drain_grace_seconds": 20,
            "backend": {
                "kind": "scripted",
                "models": [
                    {"id": "drip", "reply": "one two three four five six", "token_delay_ms": 250}
                ],
            },
        },
    )
    watched: list[int] = []
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="drip"), timeout=30
        )

        def follow() -> None:
            try:
                for response in watch:
                    watched.append(response.status)
            except grpc.RpcError:
                pass  # the server closes the watch when it stops

        follower = threading.Thread(target=follow)
        follower.start()
        with Client(server.address, max_retries=0) as client:
            stream = client.stream("drip", "x")
            chunks = [next(stream)]
            server.signal(signal.SIGTERM)
            chunks += list(stream)  # the in-flight stream runs to its end
            assert "".join(c.text for c in chunks) == "one two three four five six"
            assert chunks[-1].finish_reason is FinishReason.STOP
        assert server.process.wait(20) == 0
        follower.join(10)
    assert watched[0] == SERVING
    assert NOT_SERVING in watched
    assert "draining" in server.log()
    server.stop()


def test_new_requests_during_drain_are_unavailable_shutting_down(workdir: Path) -> None:
    server = start_modelserver(
        workdir,
        "refusing-modelserver",
        {
            "drain_grace_seconds": 20,
            "backend": {
                "kind": "scripted",
                "models": [{"id": "drip", "reply": "a b c d e f g h", "token_delay_ms": 250}],
            },
        },
    )
    try:
        with Client(server.address, max_retries=0) as client:
            stream = client.stream("drip", "x")
            next(stream)
            server.signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while health_status(server.address) != "NOT_SERVING":  # the signal has landed
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.02)
            with pytest.raises(UnavailableError) as caught:
                client.generate("drip", "x")
            assert caught.value.reason == "SHUTTING_DOWN"
            assert "".join(c.text for c in stream) == " b c d e f g h"
    finally:
        server.stop()


def test_a_loading_model_is_unavailable_with_retry_info(workdir: Path) -> None:
    server = start_modelserver(
        workdir,
        "long-loading-modelserver",
        # Loads for ten minutes: still loading whenever the test asks, however slow.
        {"backend": {"kind": "scripted", "models": [{"id": "late", "load_delay_ms": 600_000}]}},
        wait=False,
    )
    try:
        _wait_reachable(server)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.LLMServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Generate(pb.GenerateRequest(model="late", prompt="hello"), timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = parse_details(error.trailing_metadata())
        assert details.reason == "MODEL_LOADING"
        assert details.retry_after is not None and details.retry_after > 0
        with (
            Client(server.address, max_retries=0) as client,
            pytest.raises(UnavailableError) as raised,
        ):
            client.generate("late", "hello")
        assert raised.value.retry_after == details.retry_after
    finally:
        server.stop()
