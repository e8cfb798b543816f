"""Load reports (ORCA): model servers attach them to every response and stream them out
of band; the router reads them, steers by them, and never relays them to its callers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from fleet import Fleet, reported_requests
from processes import ServerProcess, free_port, wait_until
from scrape import scrape

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard_common import load_report

GRPCURL = str(Path(sys.executable).with_name("grpcurl"))
# "m" answers at once; "slow" takes one request at a time and holds it a long while.
MODELS: list[dict[str, Any]] = [
    {"id": "m", "reply": "hello"},
    {"id": "slow", "reply": "x y", "first_token_delay_ms": 60_000, "concurrency": 1},
]


def grpcurl_trailers(address: str, request: dict[str, Any]) -> dict[str, str]:
    """The trailers a Go client (grpcurl) sees for Generate: every key, none hidden."""
    command = [GRPCURL, "-v", "-plaintext", "-d", json.dumps(request)]
    command += [address, "switchyard.v1.LLMService/Generate"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    trailers = out.split("Response trailers received:", 1)[1].split("Sent ", 1)[0]
    return dict(line.split(": ", 1) for line in trailers.strip().splitlines() if ": " in line)


def report_of(trailers: Any) -> load_report.OrcaLoadReport:
    found = dict(trailers)[load_report.COPY_TRAILER]
    return load_report.OrcaLoadReport.FromString(found)


def test_every_response_ends_with_the_servers_load_in_orca_form(fleet: Fleet) -> None:
    server = fleet.scripted("server", MODELS)
    # The standard key, as a Go client (or Envoy) sees it; grpcio's core keeps that key
    # to itself, so the same bytes come under a second key too.
    trailers = grpcurl_trailers(server.address, {"model": "m", "prompt": "hi"})
    assert load_report.TRAILER in trailers and load_report.COPY_TRAILER in trailers
    assert trailers[load_report.TRAILER] == trailers[load_report.COPY_TRAILER]
    failed = grpcurl_trailers(server.address, {"model": "nope", "prompt": "hi"})  # NOT_FOUND
    assert load_report.TRAILER in failed

    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        _, call = stub.Generate.with_call(pb.GenerateRequest(model="m", prompt="hi"))
        report = report_of(call.trailing_metadata())
        # The call has left: nothing runs or waits; it counts among recent requests.
        assert report.named_metrics[load_report.RUNNING_REQUESTS] == 0
        assert report.named_metrics[load_report.WAITING_REQUESTS] == 0
        assert report.named_metrics[load_report.QUEUE_DEPTH] == 0
        assert report.rps_fractional > 0
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(pb.GenerateRequest(model="m", prompt="hi", sampling={"top_p": 7}))
        assert report_of(caught.value.trailing_metadata()).rps_fractional > 0


def test_the_out_of_band_stream_reports_running_and_queued_requests(fleet: Fleet) -> None:
    server = fleet.scripted("server", MODELS, min_load_report_interval_seconds=0.05)
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        busy = [
            stub.Generate.future(pb.GenerateRequest(model="slow", prompt="x")) for _ in range(3)
        ]
        stream = channel.unary_stream(
            load_report.STREAM_CORE_METRICS,
            request_serializer=load_report.OrcaLoadReportRequest.SerializeToString,
            response_deserializer=load_report.OrcaLoadReport.FromString,
        )
        reports = stream(load_report.OrcaLoadReportRequest(report_interval={"nanos": 50_000_000}))
        seen = None
        for report in reports:  # until the three requests show: one runs, two wait
            named = dict(report.named_metrics)
            if named[load_report.RUNNING_REQUESTS] == 1 and named[load_report.QUEUE_DEPTH] == 2:
                seen = report
                break
        assert seen is not None
        assert seen.named_metrics[load_report.WAITING_REQUESTS] == 2
        assert 0 < seen.application_utilization <= 1
        for future in busy:
            future.cancel()  # type: ignore[no-untyped-call]
        for report in reports:  # and then the server is idle again
            if report.named_metrics[load_report.RUNNING_REQUESTS] == 0:
                assert report.named_metrics[load_report.QUEUE_DEPTH] == 0
                break
        reports.cancel()  # type: ignore[no-untyped-call]


def test_the_router_never_relays_load_reports_to_its_callers(fleet: Fleet) -> None:
    server = fleet.scripted("server", MODELS)
    router = fleet.router(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    ok = grpcurl_trailers(router.address, {"model": "m", "prompt": "hi"})
    # A model server's refusal (INVALID_ARGUMENT) is relayed without its load report.
    refused = grpcurl_trailers(
        router.address, {"model": "m", "prompt": "hi", "sampling": {"topP": 7}}
    )
    for trailers in (ok, refused):
        assert load_report.TRAILER not in trailers
        assert load_report.COPY_TRAILER not in trailers
    with grpc.insecure_channel(router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        _, call = stub.Generate.with_call(pb.GenerateRequest(model="m", prompt="hi"))
        assert load_report.COPY_TRAILER not in dict(call.trailing_metadata() or ())
        streamed = stub.StreamGenerate(pb.StreamGenerateRequest(model="m", prompt="hi"))
        assert "".join(message.text for message in streamed) == "hello"
        assert load_report.COPY_TRAILER not in dict(streamed.trailing_metadata() or ())


def _wait_reported(port: int, address: str, waiting: float) -> None:
    """Waits until the router's metrics say ``address`` reported ``waiting`` requests."""
    wait_until(
        lambda: reported_requests(port, address, "waiting") == waiting,
        f"the router hears that {address} has {waiting} waiting",
        timeout=30,
    )


def _replicas(fleet: Fleet) -> tuple[ServerProcess, ServerProcess]:
    """Two replicas of model "m" (each answers with its own name) and "slow"."""
    return tuple(  # type: ignore[return-value]
        fleet.scripted(
            name,
            [{"id": "m", "reply": name}, MODELS[1]],
            min_load_report_interval_seconds=0.05,
        )
        for name in ("A", "B")
    )


@contextlib.asynccontextmanager
async def _held_directly(server: ServerProcess, requests: int) -> AsyncIterator[None]:
    """Requests to ``server`` from another client than the router, which it holds
    (one runs, the rest wait) until the block ends."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        request = pb.GenerateRequest(model="slow", prompt="x")
        calls = [stub.Generate(request) for _ in range(requests)]
        try:
            yield
        finally:
            for call in calls:
                call.cancel()


def _answers(router: ServerProcess, count: int) -> list[str]:
    with grpc.insecure_channel(router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        return [stub.Generate(pb.GenerateRequest(model="m", prompt="x")).text for _ in range(count)]


async def test_out_of_band_reports_move_picks_away_from_a_replica_others_keep_busy(
    fleet: Fleet,
) -> None:
    a, b = _replicas(fleet)
    metrics = free_port()
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics}",
            "clusters": {
                "pool": {"endpoints": [a.address, b.address], "load_report_interval_seconds": 0.05}
            },
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    assert set(_answers(router, 40)) == {"A", "B"}  # idle: both take requests
    async with _held_directly(a, 6):  # one runs on A, five wait
        await asyncio.to_thread(_wait_reported, metrics, a.address, 5)
        assert reported_requests(metrics, a.address, "running") == 1
        assert set(await asyncio.to_thread(_answers, router, 20)) == {"B"}
    await asyncio.to_thread(_wait_reported, metrics, a.address, 0)
    assert set(await asyncio.to_thread(_answers, router, 40)) == {"A", "B"}


async def test_the_load_in_response_trailers_moves_picks_without_the_stream(
    fleet: Fleet,
) -> None:
    a, b = _replicas(fleet)
    router = fleet.router(
        {
            "clusters": {
                "pool": {"endpoints": [a.address, b.address], "load_report_interval_seconds": None}
            },
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    async with _held_directly(a, 6):
        await asyncio.to_thread(_wait_until_queued, a, 5)
        # Until A answers one of the router's requests, the router knows nothing of
        # its load; that answer's trailer tells it, and the rest go to B.
        answers = await asyncio.to_thread(_answers, router, 60)
    first_a = answers.index("A")
    assert set(answers[first_a + 1 :]) == {"B"}
    assert len(answers[first_a + 1 :]) >= 20


def _wait_until_queued(server: ServerProcess, queued: int) -> None:
    """Waits until ``server``'s own report says ``queued`` requests wait there."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)

        def queue_depth() -> float:
            _, call = stub.Generate.with_call(pb.GenerateRequest(model="m", prompt="x"))
            return float(report_of(call.trailing_metadata()).named_metrics[load_report.QUEUE_DEPTH])

        wait_until(lambda: queue_depth() == queued, f"{server.name} queues {queued}", timeout=30)


def test_the_router_shows_a_llamacpp_replicas_context_in_use_as_its_kv_cache_usage(
    fleet: Fleet, slow_server: ServerProcess
) -> None:
    """llama.cpp's KV cache is its context: while a generation runs, its model server
    reports the share in use, and the router's gauge shows it; idle again, 0."""
    metrics = free_port()
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{metrics}",
            "clusters": {
                "pool": {"endpoints": [slow_server.address], "load_report_interval_seconds": 0.1}
            },
            "routes": [{"model": "tiny-slow", "targets": [{"cluster": "pool"}]}],
        }
    )
    series = (
        "switchyard_router_endpoint_reported_kv_cache_usage",
        frozenset({"cluster": "pool", "endpoint": slow_server.address}.items()),
    )

    def usage() -> float | None:
        return scrape(metrics).get(series)

    with grpc.insecure_channel(router.address) as channel:
        stream = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            pb.StreamGenerateRequest(
                model="tiny-slow",
                prompt="hello",
                sampling=pb.SamplingParams(max_tokens=3000, temperature=0.0),
            ),
            timeout=120,
        )
        next(iter(stream))  # generating now
        wait_until(lambda: (usage() or 0) > 0, "a KV-cache usage reported while generating")
        assert (usage() or 0) <= 1
        stream.cancel()  # type: ignore[no-untyped-call]
    wait_until(lambda: usage() == 0, "a KV-cache usage of 0 reported once idle")
