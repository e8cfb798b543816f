"""A cloud backend's HTTP call is a child span of the model server's span, and
carries the trace onward to the vendor (W3C traceparent)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from conftest import start_modelserver
from otlp import TRACE_ID, TRACEPARENT, Receiver, tracing_env
from vendors import VALID_KEY, FakeVendors, backend_config, new_request_id

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc


@pytest.mark.parametrize("kind", ["openai", "anthropic", "ollama"])
def test_the_vendor_call_is_an_http_child_span_that_carries_the_trace(
    kind: str, receiver: tuple[Receiver, str], vendors: FakeVendors, workdir: Path
) -> None:
    collector, endpoint = receiver
    key_file = workdir / f"traced-key-{kind}"
    key_file.write_text(VALID_KEY)
    config = backend_config(kind, vendors.url, key_file, startup_check=False)
    server = start_modelserver(
        workdir, f"traced-cloud-{kind}", config, extra_env=tracing_env(endpoint)
    )
    request_id = new_request_id()
    prompt = pb.ChatMessage(role="user", content=f"the secret prompt {request_id}")
    try:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.LLMServiceStub(channel).Generate(
                pb.GenerateRequest(model="ok", messages=[prompt]),
                metadata=(("traceparent", TRACEPARENT),),
                timeout=20,
            )
        spans = collector.wait_for(3)  # the RPC, the inference call, its HTTP request
    finally:
        server.stop()
    ours = [s for s in spans if s["trace_id"] == TRACE_ID]
    [rpc_span] = [s for s in ours if s["attributes"].get("rpc.method") == "Generate"]
    [model_span] = [s for s in ours if "gen_ai.operation.name" in s["attributes"]]
    [http_span] = [s for s in ours if "http.request.method" in s["attributes"]]
    # GenAI conventions: a remote provider's inference span is a CLIENT span
    # under the RPC, and the HTTP request is its child.
    assert model_span["parent"] == rpc_span["span_id"]
    assert model_span["kind"] == "SPAN_KIND_CLIENT"
    assert model_span["name"] == "chat ok"
    # The vendor's usage and stop reason: four prompt words in, "Hello from KIND: the
    # secret prompt REQUEST_ID" out.
    attributes = model_span["attributes"]
    assert attributes["gen_ai.provider.name"] == kind
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (
        4,
        7,
    )
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert http_span["parent"] == model_span["span_id"]
    assert http_span["attributes"]["http.request.method"] == "POST"
    assert http_span["attributes"]["http.response.status_code"] == 200
    assert http_span["attributes"]["gen_ai.provider.name"] == kind
    # The vendor received the trace context of the HTTP span.
    sent = vendors.received(request_id).headers["traceparent"]
    assert sent.split("-")[1:3] == [TRACE_ID, http_span["span_id"]]
    everything = repr(spans)
    assert VALID_KEY not in everything
    assert "secret prompt" not in everything


def test_credentials_in_the_base_url_are_redacted_from_the_http_span(
    receiver: tuple[Receiver, str], vendors: FakeVendors, workdir: Path
) -> None:
    collector, endpoint = receiver
    key_file = workdir / "traced-key-userinfo"
    key_file.write_text(VALID_KEY)
    config = backend_config("ollama", vendors.url, key_file, startup_check=False)
    # A gateway in front of Ollama that takes basic auth in the address.
    gateway = vendors.url.replace("http://", "http://gateway-user:gateway-password-42@")
    config["backend"]["base_url"] = gateway
    server = start_modelserver(workdir, "traced-userinfo", config, extra_env=tracing_env(endpoint))
    try:
        with grpc.insecure_channel(server.address) as channel:
            pb_grpc.LLMServiceStub(channel).Generate(
                pb.GenerateRequest(model="ok-text", prompt="hi"), timeout=20
            )
        spans = collector.wait_for(3)
    finally:
        server.stop()
    [http_span] = [s for s in spans if "http.request.method" in s["attributes"]]
    redacted = vendors.url.replace("http://", "http://REDACTED:REDACTED@")
    assert http_span["attributes"]["url.full"] == f"{redacted}/api/generate"
    assert "gateway-password-42" not in repr(spans)
    assert "gateway-password-42" not in server.log()
