"""Bad input gets a clear status naming the problem, through the router and direct."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from processes import ServerProcess

import switchyard
from switchyard import Client, FinishReason, InvalidArgumentError, NotFoundError
from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc


@pytest.fixture(params=["router", "direct"])
def address(
    request: pytest.FixtureRequest, router: ServerProcess, llama_server: ServerProcess
) -> str:
    return router.address if request.param == "router" else llama_server.address


def _call(address: str, request: pb.GenerateRequest) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.LLMServiceStub(channel).Generate(request, timeout=30)
    return caught.value


BAD_REQUESTS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no input", {}, ["prompt"]),
    (
        "both prompt and messages",
        {"messages": [pb.ChatMessage(role="user", content="x")]},
        ["prompt", "messages"],
    ),
    (
        "temperature below zero",
        {"sampling": pb.SamplingParams(temperature=-0.5)},
        ["sampling.temperature"],
    ),
    ("top_p zero", {"sampling": pb.SamplingParams(top_p=0.0)}, ["sampling.top_p"]),
    ("top_p above one", {"sampling": pb.SamplingParams(top_p=1.5)}, ["sampling.top_p"]),
    ("max_tokens zero", {"sampling": pb.SamplingParams(max_tokens=0)}, ["sampling.max_tokens"]),
    (
        "max_tokens negative",
        {"sampling": pb.SamplingParams(max_tokens=-3)},
        ["sampling.max_tokens"],
    ),
    (
        "max_tokens beyond the context",
        {"sampling": pb.SamplingParams(max_tokens=5000)},
        ["sampling.max_tokens"],
    ),
    (
        "too many stop sequences",
        {"sampling": pb.SamplingParams(stop=[f"s{i}" for i in range(9)])},
        ["sampling.stop"],
    ),
    ("empty stop sequence", {"sampling": pb.SamplingParams(stop=[""])}, ["sampling.stop[0]"]),
    ("top_k negative", {"sampling": pb.SamplingParams(top_k=-1)}, ["sampling.top_k"]),
    (
        "penalty out of range",
        {"sampling": pb.SamplingParams(presence_penalty=3)},
        ["sampling.presence_penalty"],
    ),
    (
        "temperature NaN",
        {"sampling": pb.SamplingParams(temperature=float("nan"))},
        ["sampling.temperature"],
    ),
    (
        "bad chat role",
        {"prompt": "", "messages": [pb.ChatMessage(role="robot", content="x")]},
        ["messages[0].role"],
    ),
]


@pytest.mark.parametrize(
    ("case", "fields", "bad_fields"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_is_invalid_argument_naming_the_field(
    address: str, case: str, fields: dict[str, Any], bad_fields: list[str]
) -> None:
    values = {"model": "tiny", "prompt": "hello", **fields}
    if case == "no input":
        values.pop("prompt")
    error = _call(address, pb.GenerateRequest(**values))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = parse_details(error.trailing_metadata())
    assert [v.field for v in details.field_violations] == bad_fields
    for field in bad_fields:
        assert field in (error.details() or "")


def test_prompt_longer_than_the_context_names_the_prompt(address: str) -> None:
    error = _call(address, pb.GenerateRequest(model="tiny", prompt="hello " * 2000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context length 1024" in (error.details() or "").replace("length is", "length")


def test_max_tokens_beyond_the_context_says_how_many_fit(address: str) -> None:
    with Client(address) as client:
        prompt_tokens = client.generate("tiny", "hello", max_tokens=1).usage.prompt_tokens
    fits = 1024 - prompt_tokens
    request = pb.GenerateRequest(
        model="tiny", prompt="hello", sampling=pb.SamplingParams(max_tokens=fits + 1)
    )
    error = _call(address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {fits}" in (error.details() or "")
    with Client(address) as client:  # exactly filling the context is allowed
        answer = client.generate("tiny", "hello", max_tokens=fits, temperature=0)
    assert answer.usage.prompt_tokens == prompt_tokens
    if answer.finish_reason is FinishReason.LENGTH:  # generated up to the last position
        assert answer.usage.completion_tokens == fits
    else:  # or the model ended its answer sooner
        assert answer.finish_reason is FinishReason.STOP
        assert 0 < answer.usage.completion_tokens < fits


def test_a_continuation_that_fills_the_context_names_the_continuation(address: str) -> None:
    request = pb.GenerateRequest(
        model="tiny", prompt="hello", continuation=pb.Continuation(text="hello " * 2000)
    )
    error = _call(address, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [violation] = parse_details(error.trailing_metadata()).field_violations
    assert violation.field == "continuation"
    assert "fill the context" in violation.description


def test_unknown_model_is_not_found_listing_the_known_ones(address: str) -> None:
    with Client(address) as client, pytest.raises(NotFoundError) as caught:
        client.generate("no-such-model", "hello")
    error = caught.value
    assert "no-such-model" in error.message
    assert "tiny" in error.available_models
    assert error.reason == "MODEL_NOT_FOUND"


def test_missing_model_is_invalid_argument(address: str) -> None:
    with Client(address) as client, pytest.raises(InvalidArgumentError) as caught:
        client.generate("", "hello")
    assert [v.field for v in caught.value.field_violations] == ["model"]


def test_stream_reports_bad_input_the_same_way(address: str) -> None:
    with Client(address) as client, pytest.raises(InvalidArgumentError) as caught:
        list(client.stream("tiny", "hello", temperature=-1))
    assert [v.field for v in caught.value.field_violations] == ["sampling.temperature"]


def test_a_conversation_the_chat_template_refuses_is_invalid_argument(
    llama_server: ServerProcess,
) -> None:
    with Client(llama_server.address) as client, pytest.raises(InvalidArgumentError) as caught:
        client.chat("tiny-strict", [{"role": "assistant", "content": "hi"}], max_tokens=2)
    assert [v.field for v in caught.value.field_violations] == ["messages"]
    assert "must start with a user message" in caught.value.message


@pytest.mark.parametrize(
    "raw",
    [
        # Field 1 (model) "tiny", field 2 (prompt) two bytes that are not UTF-8.
        pytest.param(b"\x0a\x04tiny" + b"\x12\x02\xff\xfe", id="prompt not UTF-8"),
        # Field 1 claims 100 bytes and the message ends after 4: the router cannot
        # read the model name, the model server cannot parse the request.
        pytest.param(b"\x0a\x64tiny", id="model field cut short"),
    ],
)
def test_bytes_that_are_not_a_request_name_the_request(address: str, raw: bytes) -> None:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/switchyard.v1.LLMService/Generate", None, None)
        with pytest.raises(grpc.RpcError) as caught:
            call(raw, timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in parse_details(error.trailing_metadata()).field_violations] == [
        "request"
    ]


def test_a_made_up_model_name_cannot_forge_a_log_line(llama_server: ServerProcess) -> None:
    forged = "x\n2026-01-01 00:00:00,000 INFO forged: request code=OK"
    with Client(llama_server.address) as client, pytest.raises(NotFoundError):
        client.generate(forged, "hello")
    # The server logs a request just after answering it: wait for the line.
    deadline = time.monotonic() + 10
    while "model=x\\n2026-01-01" not in (log := llama_server.log()):  # there, escaped
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "\nforged" not in log and "\n2026-01-01 00:00:00,000 INFO forged" not in log


def test_logprobs_on_llamacpp_is_refused_clearly(address: str) -> None:
    error = _call(
        address,
        pb.GenerateRequest(model="tiny", prompt="hi", sampling=pb.SamplingParams(logprobs=2)),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.logprobs" in (error.details() or "")


def test_upstream_failure_after_tokens_is_unavailable_through_the_router(
    router: ServerProcess,
) -> None:
    with Client(router.address) as client:
        received = []
        with pytest.raises(switchyard.UnavailableError):
            for chunk in client.stream("flaky", "x"):
                received.append(chunk.text)
    assert "".join(received) == "one two"
