"""Traces: one request through client -> router -> model server, received over real OTLP."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import write_config
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from processes import ServerProcess, free_port

from switchyard import Client
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver (no collector binary exists here)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def Export(  # noqa: N802 - gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = {
                    a.key: a.value.string_value for a in resource_spans.resource.attributes
                }.get("service.name", "")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": service,
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "events": [e.name for e in span.events],
                            }
                        )

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} spans, got {self.spans}")


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def http_receiver() -> Iterator[tuple[Receiver, str]]:
    """OTLP over HTTP (protobuf bodies POSTed to /v1/traces), as a collector serves it."""
    collector = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            collector.add(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield collector, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def _start(
    workdir: Path, name: str, module: str, config: dict[str, Any], env: dict[str, str]
) -> ServerProcess:
    path = write_config(workdir / f"{name}.yaml", config)
    server = ServerProcess(name, module, path, free_port(), workdir, extra_env=env)
    server.wait_serving()
    return server


def test_one_request_is_one_trace_through_router_and_model_server(
    receiver: tuple[Receiver, str], workdir: Path, models_dir: Path
) -> None:
    collector, endpoint = receiver
    directory = workdir / "traced-models"
    directory.mkdir(exist_ok=True)
    if not (directory / "tiny.gguf").exists():
        (directory / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    broken = _start(
        workdir,
        "traced-broken",
        "switchyard_modelserver",
        {"backend": {"kind": "scripted", "models": [{"id": "tiny", "fail_after_tokens": 0}]}},
        _env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    server = _start(
        workdir,
        "traced-llama",
        "switchyard_modelserver",
        {"backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1}},
        _env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    router = _start(
        workdir,
        "traced-router",
        "switchyard_router",
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
        _env(endpoint, SWITCHYARD_LOG_FORMAT="json"),
    )
    try:
        with grpc.insecure_channel(router.address) as channel:
            response = pb_grpc.LLMServiceStub(channel).Generate(
                pb.GenerateRequest(
                    model="tiny",
                    prompt="the secret prompt",
                    sampling=pb.SamplingParams(max_tokens=5, temperature=0.0, top_p=0.9),
                ),
                metadata=(("traceparent", TRACEPARENT),),
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
    assert "gen_ai.first_token" in model_span["events"]
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
    server = _start(
        workdir,
        "traced-content",
        "switchyard_modelserver",
        {"backend": {"kind": "scripted", "models": [{"id": "echo"}]}},
        _env(endpoint, OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"),
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
    server = _start(
        workdir,
        "traced-http",
        "switchyard_modelserver",
        {"backend": {"kind": "scripted", "models": [{"id": "echo"}]}},
        _env(endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf"),
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
