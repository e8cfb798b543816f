"""Fuzzing: random GenerateRequests through the router to real model servers
(llama.cpp on a tiny model, and scripted) never get INTERNAL or UNKNOWN, never
hang, never crash a server, and every INVALID_ARGUMENT names its fields."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from processes import ServerProcess, on_ci

from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb

# A call that takes longer than this counts as a hang.
CALL_TIMEOUT = 30.0
FIELD = re.compile(
    r"request|model|prompt|messages(\[\d+\]\.role)?|continuation(\.token_ids|\.text)?"
    r"|sampling\.(temperature|top_p|top_k|max_tokens|stop(\[\d+\])?|seed|presence_penalty"
    r"|frequency_penalty|repetition_penalty|logprobs)"
)
OUTCOMES: Counter[str] = Counter()  # calls made and statuses seen, for the summary test
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
INT32 = st.integers(-(2**31), 2**31 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "é", "日本語", "🙂" * 3, "\u202e", "<|im_end|>"]),
)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Unset three times in four, so that many requests are valid and generate."""
    return st.integers(0, 3).flatmap(lambda n: strategy if n == 2 else st.none())


def _mostly(usual: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``wild`` one time in five: enough valid requests to reach generation."""
    return st.integers(0, 4).flatmap(lambda n: wild if n == 2 else usual)


@st.composite
def sampling(draw: st.DrawFn) -> pb.SamplingParams:
    fields = {
        "temperature": draw(_optional(_mostly(st.floats(0, 2, width=32), FLOAT32))),
        "top_p": draw(_optional(_mostly(st.floats(0.25, 1, width=32), FLOAT32))),
        "top_k": draw(_optional(_mostly(st.integers(0, 50), INT32))),
        "max_tokens": draw(_optional(_mostly(st.integers(1, 48), INT32))),
        "stop": draw(_optional(st.lists(TEXT, max_size=10))) or [],
        "seed": draw(_optional(st.integers(-(2**63), 2**63 - 1))),
        "presence_penalty": draw(_optional(FLOAT32)),
        "frequency_penalty": draw(_optional(FLOAT32)),
        "repetition_penalty": draw(_optional(FLOAT32)),
        "logprobs": draw(_optional(INT32)),
    }
    return pb.SamplingParams(**{k: v for k, v in fields.items() if v is not None})


MESSAGES = _mostly(
    st.lists(
        st.builds(
            pb.ChatMessage,
            role=_mostly(st.sampled_from(["user", "system", "assistant"]), TEXT),
            content=TEXT,
        ),
        min_size=1,
        max_size=6,
    ),
    # Many messages: past the model server's limit of 1024.
    st.integers(1000, 3000).map(lambda n: [pb.ChatMessage(role="user", content="hi")] * n),
)
PROMPT = _mostly(
    st.text(min_size=1, max_size=60),
    st.one_of(
        TEXT,
        st.text(min_size=100, max_size=2000),
        # Huge: past the 1,000,000-character prompt limit, or far past the context.
        st.sampled_from([20_000, 1_000_001, 4_000_000]).map(lambda n: "a " * (n // 2)),
    ),
)


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        model=draw(
            _mostly(st.sampled_from(["tiny", "echo", "canned"]), st.sampled_from(["", "x"]))
        ),
        sampling=draw(sampling()),
    )
    shape = draw(_mostly(st.sampled_from(["prompt", "messages"]), st.sampled_from(["both", ""])))
    if shape in ("prompt", "both"):
        request.prompt = draw(PROMPT)
    if shape in ("messages", "both"):
        request.messages.extend(draw(MESSAGES))
    if draw(st.integers(0, 3)) == 2:
        request.continuation.text = draw(TEXT)
        request.continuation.token_ids.extend(
            draw(st.lists(st.one_of(st.integers(-3, 300), INT32), max_size=5))
        )
    return request


def _nested(depth: int) -> bytes:
    """A length-delimited field inside another, ``depth`` deep (unknown field 15)."""
    data = b"x"
    for _ in range(depth):
        data = bytes([(15 << 3) | 2]) + _varint(len(data)) + data
    return data


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _check(address: str, method: str, payload: bytes) -> None:
    """One raw call: whatever happens, the status must be a clear one."""
    OUTCOMES["calls"] += 1
    with grpc.insecure_channel(address) as channel:
        if method == "Generate":
            call = channel.unary_unary("/switchyard.v1.LLMService/Generate", None, None)
            try:
                call(payload, timeout=CALL_TIMEOUT)
                return
            except grpc.RpcError as error:
                _assert_clear(error)
        else:
            stream = channel.unary_stream("/switchyard.v1.LLMService/StreamGenerate", None, None)
            try:
                for _ in stream(payload, timeout=CALL_TIMEOUT):
                    pass
            except grpc.RpcError as error:
                _assert_clear(error)


def _assert_clear(error: grpc.RpcError) -> None:
    code, message = error.code(), error.details() or ""
    OUTCOMES[code.name] += 1
    assert code not in NEVER, f"{code.name}: {message}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violations = parse_details(error.trailing_metadata()).field_violations
        assert violations, f"no BadRequest in: {message}"
        for violation in violations:
            assert FIELD.fullmatch(violation.field), violation
            assert violation.field in message


FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@FUZZ_SETTINGS
@given(
    request=generate_requests(), stream=st.booleans(), nesting=st.sampled_from([0, 0, 0, 5, 200])
)
def test_random_requests_through_the_router_get_clear_statuses(
    router: ServerProcess,
    llama_server: ServerProcess,
    scripted_server: ServerProcess,
    request: pb.GenerateRequest,
    stream: bool,
    nesting: int,
) -> None:
    payload = request.SerializeToString()
    if nesting:
        payload += _nested(nesting)
    _check(router.address, "StreamGenerate" if stream else "Generate", payload)
    for server in (router, llama_server, scripted_server):
        assert server.process.poll() is None, f"{server.name} died:\n{server.log()[-3000:]}"


@settings(FUZZ_SETTINGS, max_examples=60)
@given(payload=st.binary(max_size=300), stream=st.booleans())
def test_random_bytes_through_the_router_get_clear_statuses(
    router: ServerProcess,
    llama_server: ServerProcess,
    scripted_server: ServerProcess,
    payload: bytes,
    stream: bool,
) -> None:
    _check(router.address, "StreamGenerate" if stream else "Generate", payload)
    for server in (router, llama_server, scripted_server):
        assert server.process.poll() is None, f"{server.name} died:\n{server.log()[-3000:]}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_sampling_values_name_their_field(router: ServerProcess, value: float) -> None:
    request = pb.GenerateRequest(
        model="tiny", prompt="hi", sampling=pb.SamplingParams(temperature=value, top_p=value)
    )
    with grpc.insecure_channel(router.address) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/switchyard.v1.LLMService/Generate", None, None)(
            request.SerializeToString(), timeout=CALL_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in parse_details(caught.value.trailing_metadata()).field_violations]
    assert fields == ["sampling.temperature", "sampling.top_p"]


def test_the_fuzzing_reached_generation_and_validation() -> None:
    """The examples above were not all refused at the door: some generated, and
    the model servers' validation (not only the router's) was exercised."""
    if OUTCOMES["calls"] == 0:
        # Only when this test was picked alone; on CI the whole file runs, in order.
        if on_ci():
            pytest.fail("the fuzz tests did not run before this one", pytrace=False)
        pytest.skip("the fuzz tests did not run")
    refused = sum(n for code, n in OUTCOMES.items() if code != "calls")
    assert OUTCOMES["calls"] - refused > 10  # served
    assert OUTCOMES["INVALID_ARGUMENT"] > 10


@pytest.mark.parametrize("target", ["router", "scripted_server"])
def test_an_unreadable_list_models_request_is_invalid_argument(
    target: str, request: pytest.FixtureRequest
) -> None:
    server: ServerProcess = request.getfixturevalue(target)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/switchyard.v1.LLMService/ListModels", None, None)(
            b"\xff\xff", timeout=CALL_TIMEOUT
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    fields = [v.field for v in parse_details(caught.value.trailing_metadata()).field_violations]
    assert fields == ["request"]
