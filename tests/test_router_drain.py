"""The router's drain on SIGTERM: health turns NOT_SERVING, requests in flight
finish, and clients' open Health.Watch streams do not hold it for the whole
grace period."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import grpc
from conftest import SCRIPTED_MODELS, start_router
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import ServerProcess

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

GRACE_SECONDS = 120  # far longer than the test may take: a drain must not wait it out


def test_sigterm_lets_a_stream_finish_and_does_not_wait_for_health_watches(
    workdir: Path, scripted_server: ServerProcess
) -> None:
    router = start_router(
        workdir,
        "draining-router",
        {
            "clusters": {"scripted": {"endpoints": [scripted_server.address]}},
            "routes": [
                {"model": m["id"], "targets": [{"cluster": "scripted"}]} for m in SCRIPTED_MODELS
            ],
            "drain_grace_seconds": GRACE_SECONDS,
        },
    )
    try:
        with grpc.insecure_channel(router.address) as channel:
            statuses: list[str] = []
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=GRACE_SECONDS
            )

            def follow() -> None:
                try:
                    for answer in watch:
                        statuses.append(
                            health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                        )
                except grpc.RpcError:
                    statuses.append("ended")

            follower = threading.Thread(target=follow)
            follower.start()
            # Eight words 200 ms apart: still streaming when SIGTERM arrives.
            stream = pb_grpc.LLMServiceStub(channel).StreamGenerate(
                pb.StreamGenerateRequest(model="drip", prompt="p"), timeout=60
            )
            first = next(iter(stream))
            router.signal(signal.SIGTERM)
            rest = [chunk.text for chunk in stream]
            assert first.text + "".join(rest) == "one two three four five six seven eight"
            try:
                router.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"the router still runs 30 s after SIGTERM:\n{router.log()}"
                ) from None
            follower.join(timeout=10)
        assert statuses[0] == "SERVING"
        assert "NOT_SERVING" in statuses
        assert statuses[-1] == "ended"
        assert router.process.returncode == 0
    finally:
        router.stop()
