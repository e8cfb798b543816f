"""Traces: one request through client -> router -> model server, received over real OTLP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import start_modelserver, start_router, write_config
from otlp import CLIENT_SPAN, TRACE_ID, TRACEPARENT, TRACESTATE, Receiver, tracing_env
from processes import ServerProcess, free_port

from switchyard import Client
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc


def test_one_request_is_one_trace_through_router_and_model_server(
    receiver: tuple[Receiver, str], workdir: Path, models_dir: Path
) -> None:
    collector, endpoint = receiver
    directory = workdir / "traced-models"
    directory.mkdir(exist_ok=True)
    if not (directory / "tiny.gguf").exists():
        (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    broken = start_modelserver(
        workdir,
        "traced-broken",
        {"backend": {"kind": "scripted", "models": [{"id": "tiny", "fail_after_tokens": 0}]}},
        extra_env=tracing_env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    server = start_modelserver(
        workdir,
        "traced-llama",
        {"backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1}},
        extra_env=tracing_env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    router = start_router(
        workdir,
        "traced-router",
        {
            "clusters": {
                "first": {"endpoints": [broken.address]},
                "second": {"endpoints": [server.address]},
            },
            "routes": [
                {
                    "model": "tiny",
                    "targets": [{"cluster": "first"}, {"cluster": "second", "priority": 1}],
                }
            ],
        },
        extra_env=tracing_env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    try:
        with grpc.insecure_channel(router.address) as channel:
            response = pb_grpc.LLMServiceStub(channel).Generate(
                pb.GenerateRequest(
                    model="tiny",
                    prompt="the secret prompt",
                    sampling=pb.SamplingParams(max_tokens=5, temperature=0.0, top_p=0.9),
                ),
                metadata=(("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)),
                timeout=30,
            )
        spans = collector.wait_for(7)  # router 3, each model server 2
    finally:
        for process in (router, server, broken):
            process.stop()
    ours = [s for s in spans if s["trace_id"] == TRACE_ID]
    by_name = {s["name"]: s for s in ours}
    request_span = by_name["Generate tiny"]
    assert request_span["service"] == "switchyard-router"
    assert request_span["parent"] == CLIENT_SPAN  # continues the caller's trace
    # The caller's vendor entries (W3C tracestate) ride along every span of the trace.
    assert {s["trace_state"] for s in ours} == {TRACESTATE}
    assert request_span["kind"] == "SPAN_KIND_SERVER"
    rpc_call = {"rpc.system": "grpc", "rpc.service": "switchyard.v1.LLMService"}
    assert request_span["attributes"].items() >= {**rpc_call, "rpc.method": "Generate"}.items()
    attempts = sorted(
        (s for s in ours if s["name"].startswith("attempt ")), key=lambda s: s["name"]
    )
    assert [a["attributes"]["switchyard.outcome"] for a in attempts] == ["UNAVAILABLE", "OK"]
    assert all(a["parent"] == request_span["span_id"] for a in attempts)  # failover is visible
    generation = [
        s
        for s in ours
        if s["service"] == "switchyard-modelserver"
        and s["attributes"].get("gen_ai.provider.name") == "llamacpp"
    ]
    [model_span] = generation
    # The model server's RPC span continues the router's second attempt; the
    # GenAI inference span (INTERNAL for an in-process engine) sits under it.
    rpc_span = next(s for s in ours if s["span_id"] == model_span["parent"])
    assert rpc_span["service"] == "switchyard-modelserver"
    assert rpc_span["name"] == "switchyard.v1.LLMService/Generate"
    assert rpc_span["kind"] == "SPAN_KIND_SERVER"
    assert rpc_span["attributes"].items() >= {**rpc_call, "rpc.method": "Generate"}.items()
    assert rpc_span["parent"] == attempts[1]["span_id"]
    assert rpc_span["attributes"]["rpc.grpc.status_code"] == 0
    assert model_span["name"] == "text_completion tiny"
    assert model_span["kind"] == "SPAN_KIND_INTERNAL"
    attributes = model_span["attributes"]
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "tiny"
    assert attributes["gen_ai.response.model"] == "tiny"
    assert attributes["gen_ai.request.max_tokens"] == 5
    assert attributes["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert attributes["gen_ai.usage.output_tokens"] == response.usage.completion_tokens == 5
    assert attributes["gen_ai.usage.input_tokens"] == response.usage.prompt_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert attributes["gen_ai.request.temperature"] == 0.0
    assert "gen_ai.first_token" in model_span["events"]
    assert attributes["switchyard.time_to_first_token_ms"] > 0
    assert "error.type" not in attributes
    # The first attempt's model server failed: its inference span says how.
    [failed_span] = [
        s
        for s in ours
        if s["service"] == "switchyard-modelserver"
        and s["attributes"].get("gen_ai.provider.name") == "scripted"
    ]
    assert failed_span["attributes"]["error.type"] == "UNAVAILABLE"
    # Prompt and completion text are not recorded unless an operator opts in.
    everything = repr(spans)
    assert "secret prompt" not in everything
    # JSON logs: one line per request outcome, with the ids that lead to its spans.
    [served] = _request_lines(server)
    assert (served["code"], served["trace_id"]) == ("OK", TRACE_ID)
    assert served["span_id"] == rpc_span["span_id"]
    assert served["completion_tokens"] == 5
    [failed] = _request_lines(broken)
    assert (failed["code"], failed["trace_id"], failed["level"]) == (
        "UNAVAILABLE",
        TRACE_ID,
        "INFO",
    )
    assert "secret prompt" not in server.log()
    # The router's other lines about this request (here: the failed attempt) lead to it too.
    routed = [json.loads(line) for line in router.log().splitlines() if line.startswith("{")]
    [attempt_line] = [e for e in routed if e["message"].startswith("attempt on")]
    assert attempt_line["trace_id"] == TRACE_ID
    assert attempt_line["span_id"] == request_span["span_id"]
    assert response.text not in everything or not response.text.strip()


def test_prompt_and_completion_are_recorded_only_when_an_operator_opts_in(
    receiver: tuple[Receiver, str], workdir: Path
) -> None:
    collector, endpoint = receiver
    server = start_modelserver(
        workdir,
        "traced-content",
        {"backend": {"kind": "scripted", "models": [{"id": "echo"}]}},
        extra_env=tracing_env(endpoint, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"),
    )
    try:
        with Client(server.address) as client:
            client.generate("echo", "opted-in prompt")
        spans = collector.wait_for(2)  # the RPC span and its inference span
    finally:
        server.stop()
    [span] = [s for s in spans if "gen_ai.operation.name" in s["attributes"]]
    assert "opted-in prompt" in span["attributes"]["gen_ai.input.messages"]
    [output] = json.loads(span["attributes"]["gen_ai.output.messages"])
    assert output["parts"][0]["content"] == "opted-in prompt"  # the echo model's answer
    assert output["finish_reason"] == "stop"


def test_spans_can_be_exported_with_otlp_over_http(
    http_receiver: tuple[Receiver, str], workdir: Path
) -> None:
    collector, endpoint = http_receiver
    server = start_modelserver(
        workdir,
        "traced-http",
        {"backend": {"kind": "scripted", "models": [{"id": "echo"}]}},
        extra_env=tracing_env(endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
    )
    try:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.LLMServiceStub(channel).Generate(
                pb.GenerateRequest(model="echo", prompt="over http"),
                metadata=(("traceparent", TRACEPARENT),),
                timeout=30,
            )
        spans = collector.wait_for(2)
    finally:
        server.stop()
    assert {s["name"] for s in spans} == {
        "switchyard.v1.LLMService/Generate",
        "text_completion echo",
    }
    assert {s["trace_id"] for s in spans} == {TRACE_ID}


def test_an_unknown_trace_exporter_stops_the_server_with_a_clear_error(workdir: Path) -> None:
    path = write_config(
        workdir / "bad-exporter.yaml", {"backend": {"kind": "scripted", "models": [{"id": "e"}]}}
    )
    server = ServerProcess(
        "bad-exporter",
        "switchyard_modelserver",
        path,
        free_port(),
        workdir,
        extra_env={"OTEL_TRACES_EXPORTER": "jaeger"},
    )
    try:
        assert server.process.wait(timeout=60) == 2
    finally:
        server.stop()
    assert "OTEL_TRACES_EXPORTER='jaeger': expected otlp, console or none" in server.log()


def _request_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["message"].startswith("request "):
                lines.append(entry)
    return lines
