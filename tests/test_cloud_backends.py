"""Cloud backends: the real openai and anthropic SDKs (and httpx2 for Ollama) talk
HTTP to fake vendors on 127.0.0.1 that speak each wire format (tests/vendors.py),
behind a real model server process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import start_modelserver
from processes import ServerProcess, free_port, health_status
from vendors import (
    MODELS,
    OLLAMA_CONTEXT_LENGTH,
    RATE_LIMIT_RESET_SECONDS,
    RETRY_AFTER_SECONDS,
    VALID_KEY,
    FakeVendors,
    backend_config,
    new_request_id,
)

from switchyard import Client, FailedPreconditionError
from switchyard.status import StatusDetails, parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

KINDS = ("openai", "anthropic", "ollama")
# Past it, a vendor's slow first byte (5 s) or 200-tick stream (10 s) still runs on.
DEADLINE = 2.0
WRONG_KEY = "sk-wrong-key-fedcba9876543210"


@pytest.fixture(scope="module")
def cloud(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> Iterator[dict[str, ServerProcess]]:
    servers = {
        # Ollama's startup check would mark "missing" unavailable before the
        # 404 test could see the vendor's answer; it has a test of its own.
        kind: start_modelserver(
            workdir,
            f"cloud-{kind}",
            backend_config(kind, vendors.url, key_file, startup_check=kind != "ollama"),
        )
        for kind in KINDS
    }
    yield servers
    for server in servers.values():
        server.stop()


def _stub(server: ServerProcess) -> tuple[grpc.Channel, pb_grpc.LLMServiceStub]:
    channel = grpc.insecure_channel(server.address)
    return channel, pb_grpc.LLMServiceStub(channel)


def generate(server: ServerProcess, request: pb.GenerateRequest, timeout: float = 20) -> Any:
    channel, stub = _stub(server)
    with channel:
        return stub.Generate(request, timeout=timeout)


def stream(
    server: ServerProcess, request: pb.GenerateRequest, timeout: float = 20
) -> list[pb.StreamGenerateResponse]:
    channel, stub = _stub(server)
    streamed = pb.StreamGenerateRequest(
        model=request.model,
        prompt=request.prompt,
        messages=request.messages,
        sampling=request.sampling,
    )
    with channel:
        return list(stub.StreamGenerate(streamed, timeout=timeout))


def failure(call: Any) -> tuple[grpc.StatusCode, str, StatusDetails]:
    """Runs ``call`` and returns the status it failed with."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details(), parse_details(error.trailing_metadata())


def chat(
    model: str, text: str = "hi there", *, request_id: str = "", **sampling: Any
) -> pb.GenerateRequest:
    """A two-message chat; ``request_id`` (see vendors.py) rides in the system message,
    so the reply (which echoes the user's message) does not change."""
    system = f"Be brief. {request_id}" if request_id else "Be brief."
    return pb.GenerateRequest(
        model=model,
        messages=[
            pb.ChatMessage(role="system", content=system),
            pb.ChatMessage(role="user", content=text),
        ],
        sampling=pb.SamplingParams(**sampling),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_chat_answers_like_any_model_server(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    response = generate(cloud[kind], chat("ok", request_id=request_id))
    assert response.text == f"Hello from {kind}: hi there"
    assert response.finish_reason == pb.FINISH_REASON_STOP
    assert (response.model, response.backend) == ("ok", kind)
    # Usage is the vendor's: its prompt counts both messages (three words and two),
    # its reply five words.
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (5, 5)
    sent = vendors.received(request_id).body
    if kind == "anthropic":
        assert sent["system"] == f"Be brief. {request_id}"  # the system prompt is split out
        assert sent["messages"] == [{"role": "user", "content": "hi there"}]
    else:
        assert sent["messages"][0] == {"role": "system", "content": f"Be brief. {request_id}"}


@pytest.mark.parametrize("kind", KINDS)
def test_stream_carries_deltas_then_finish_and_usage(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    messages = stream(cloud[kind], chat("ok", "stream please", request_id=request_id))
    *deltas, last = messages
    assert "".join(m.text for m in messages) == f"Hello from {kind}: stream please"
    assert len(deltas) >= 2  # streamed in pieces, not one blob
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert last.usage.completion_tokens == 5
    if kind == "openai":  # usage arrives in the final chunk because we ask for it
        assert vendors.received(request_id).body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_parameters_reach_the_vendor(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    sampling: dict[str, Any] = {"temperature": 0.5, "top_p": 0.5, "max_tokens": 2, "stop": ["##"]}
    if kind != "anthropic":
        sampling.update(seed=7, presence_penalty=0.5, frequency_penalty=0.25)
    request_id = new_request_id()
    response = generate(cloud[kind], chat("ok", request_id=request_id, **sampling))
    assert response.finish_reason == pb.FINISH_REASON_LENGTH
    assert response.usage.completion_tokens == 2
    sent = vendors.received(request_id).body
    if kind == "openai":
        assert {k: sent[k] for k in sampling} == {**sampling, "stop": ["##"]}
    elif kind == "anthropic":
        assert (sent["max_tokens"], sent["stop_sequences"]) == (2, ["##"])
        assert (sent["temperature"], sent["top_p"]) == (0.5, 0.5)
    else:
        options = sent["options"]
        assert options["num_predict"] == 2
        assert {k: options[k] for k in ("temperature", "seed", "stop", "presence_penalty")} == {
            "temperature": 0.5,
            "seed": 7,
            "stop": ["##"],
            "presence_penalty": 0.5,
        }


@pytest.mark.parametrize("model", ["ok", "ok-text"])
def test_openai_logprobs_come_back_per_token(
    model: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    if model == "ok":
        request = chat("ok", "a b", request_id=request_id, logprobs=1)
        words = ["Hello", " from", " openai:", " a", " b"]
    else:  # the prompt is echoed, request id and all
        request = pb.GenerateRequest(
            model="ok-text", prompt=f"a {request_id}", sampling=pb.SamplingParams(logprobs=1)
        )
        words = ["Hello", " from", " openai:", " a", f" {request_id}"]
    response = generate(cloud["openai"], request)
    assert [t.text for t in response.tokens] == words
    assert [round(t.logprob, 3) for t in response.tokens] == [-0.1, -0.2, -0.3, -0.4, -0.5]
    assert [[a.text for a in t.top_logprobs] for t in response.tokens] == [[w] for w in words]
    sent = vendors.received(request_id).body
    streamed_id = new_request_id()
    if model == "ok":
        request = chat("ok", "a b", request_id=streamed_id, logprobs=1)
    else:
        request.prompt = f"a {streamed_id}"
        words[-1] = f" {streamed_id}"
    streamed = [t for m in stream(cloud["openai"], request) for t in m.tokens]
    assert [t.text for t in streamed] == words
    assert vendors.received(streamed_id).body["logprobs"] == sent["logprobs"]
    if model == "ok":  # chat asks for the chosen token's and the top alternatives'
        assert (sent["logprobs"], sent["top_logprobs"]) == (True, 1)
    else:
        assert sent["logprobs"] == 1


@pytest.mark.parametrize("kind", ["anthropic", "ollama"])
def test_logprobs_where_the_api_has_none_are_invalid_argument(
    kind: str, cloud: dict[str, ServerProcess]
) -> None:
    code, message, details = failure(lambda: generate(cloud[kind], chat("ok", logprobs=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in details.field_violations] == ["sampling.logprobs"]
    assert kind in message


def test_openai_can_send_max_completion_tokens(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> None:
    config = backend_config("openai", vendors.url, key_file, startup_check=False)
    config["backend"]["max_tokens_parameter"] = "max_completion_tokens"
    server = start_modelserver(workdir, "cloud-openai-completion-tokens", config)
    request_id = new_request_id()
    try:
        request = chat("ok", request_id=request_id, max_tokens=3)
        assert generate(server, request).usage.completion_tokens == 3
    finally:
        server.stop()
    sent = vendors.received(request_id).body
    assert sent["max_completion_tokens"] == 3
    assert "max_tokens" not in sent


def test_anthropic_stop_sequence_is_reported_with_the_sequence(
    cloud: dict[str, ServerProcess],
) -> None:
    response = generate(cloud["anthropic"], chat("ok", "one two three", stop=["two"]))
    assert response.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE
    assert response.stop_sequence == "two"
    assert response.text == "Hello from anthropic: one "


def test_anthropic_sends_the_required_max_tokens_default(
    cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    generate(cloud["anthropic"], chat("ok", request_id=request_id))
    assert vendors.received(request_id).body["max_tokens"] == 1024


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_a_prompt_goes_to_the_completion_api(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    prompt = f"Once upon {new_request_id()}"
    response = generate(cloud[kind], pb.GenerateRequest(model="ok-text", prompt=prompt))
    assert response.text == f"Hello from {kind}: {prompt}"
    record = vendors.received(prompt.split()[-1])
    assert record.path == ("/v1/completions" if kind == "openai" else "/api/generate")
    assert record.body["prompt"] == prompt


@pytest.mark.parametrize("kind", KINDS)
def test_token_ids_asked_for_are_answered_without_them(
    kind: str, cloud: dict[str, ServerProcess]
) -> None:
    channel, stub = _stub(cloud[kind])
    request = chat("ok")
    with channel:
        messages = list(
            stub.StreamGenerate(
                pb.StreamGenerateRequest(
                    model="ok", messages=request.messages, include_token_ids=True
                ),
                timeout=20,
            )
        )
    assert "".join(m.text for m in messages) == f"Hello from {kind}: hi there"
    assert not any(m.tokens for m in messages)


@pytest.mark.parametrize("delivered", ["Hello from", "Hello from "])
def test_anthropic_continues_a_resumed_reply_by_prefill(
    delivered: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    channel, stub = _stub(cloud["anthropic"])
    request_id = new_request_id()
    request = chat("ok", "go on", request_id=request_id)
    with channel:
        messages = list(
            stub.StreamGenerate(
                pb.StreamGenerateRequest(
                    model="ok",
                    messages=request.messages,
                    continuation=pb.Continuation(text=delivered),
                ),
                timeout=20,
            )
        )
    assert delivered + "".join(m.text for m in messages) == "Hello from anthropic: go on"
    sent = vendors.received(request_id).body["messages"]
    # The API refuses a prefill ending in whitespace; the reply's own space is dropped.
    assert sent[-1] == {"role": "assistant", "content": "Hello from"}


def test_a_chat_only_model_refuses_a_prompt(cloud: dict[str, ServerProcess]) -> None:
    code, message, details = failure(
        lambda: generate(cloud["openai"], pb.GenerateRequest(model="ok", prompt="x"))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "chat-only" in message
    assert [v.field for v in details.field_violations] == ["prompt"]


def test_list_models_shows_the_configured_cards(cloud: dict[str, ServerProcess]) -> None:
    channel, stub = _stub(cloud["openai"])
    with channel:
        models = {m.id: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
    assert models["ok"].backend == "openai"
    assert models["ok"].status == pb.MODEL_STATUS_READY
    assert list(models["ok-text"].capabilities) == [
        pb.CAPABILITY_COMPLETION,
        pb.CAPABILITY_STREAMING,
    ]


# -- the error table --------------------------------------------------------


def test_retry_after_reads_milliseconds_seconds_and_http_dates() -> None:
    from email.utils import formatdate

    from switchyard_modelserver.backends.cloud.retry_after import retry_after

    assert retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after({"Retry-After": "3"}) == 3.0
    assert 25 < retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert retry_after({}) == 1.0  # a 429 without a header still says when to retry


def test_retry_after_falls_back_to_the_reset_of_the_exhausted_rate_limit() -> None:
    from switchyard_modelserver.backends.cloud.retry_after import retry_after

    openai_headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m30.5s",
        "x-ratelimit-remaining-tokens": "100",
        "x-ratelimit-reset-tokens": "20ms",
    }
    assert retry_after(openai_headers) == 90.5  # the limit that ran out, not the soonest
    # None says it ran out (the request needs more than is left): wait for the later one.
    assert (
        retry_after({"x-ratelimit-reset-tokens": "20ms", "x-ratelimit-reset-requests": "2s"}) == 2
    )
    assert retry_after({**openai_headers, "retry-after": "3"}) == 3.0  # retry-after comes first
    # Headers no one can read count as absent: they never fail the request.
    for odd in ("soon", "inf", "nan", "Mon, 99 Foo 2025"):
        assert retry_after({"retry-after": odd, "x-ratelimit-reset-requests": "4s"}) == 4.0
        assert retry_after({"retry-after": odd}) == 1.0
    assert retry_after({"retry-after": "-5"}) == 0.0


def test_a_key_echoed_by_a_provider_is_scrubbed_but_config_names_are_not() -> None:
    from switchyard_modelserver.backends.cloud.api_key import Secret

    secret = Secret("plain-secret-value")
    text = secret.scrub(
        f"Incorrect API key provided: {WRONG_KEY}; plain-secret-value; fix backend.api_key_file"
    )
    assert WRONG_KEY not in text and "plain-secret-value" not in text
    assert text.endswith("fix backend.api_key_file")
    assert "plain-secret-value" not in repr(secret)


ERRORS = [
    ("fault-429", grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    ("fault-429-reset", grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    ("fault-429-odd-header", grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
    ("fault-500", grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"),
    ("fault-529", grpc.StatusCode.UNAVAILABLE, "PROVIDER_OVERLOADED"),
    ("fault-context", grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED"),
    ("fault-400", grpc.StatusCode.INVALID_ARGUMENT, "PROVIDER_REJECTED_REQUEST"),
    ("fault-403", grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_PERMISSION_DENIED"),
    ("fault-418", grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_REFUSED"),
    ("missing", grpc.StatusCode.NOT_FOUND, "PROVIDER_MODEL_NOT_FOUND"),
    ("fault-malformed", grpc.StatusCode.UNAVAILABLE, "PROVIDER_STREAM_BROKEN"),
    ("fault-drop", grpc.StatusCode.UNAVAILABLE, "PROVIDER_STREAM_BROKEN"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("model", "code", "reason"), ERRORS)
def test_vendor_failures_map_onto_the_error_table(
    kind: str,
    model: str,
    code: grpc.StatusCode,
    reason: str,
    cloud: dict[str, ServerProcess],
) -> None:
    got_code, message, details = failure(lambda: stream(cloud[kind], chat(model)))
    assert (got_code, details.reason) == (code, reason), message
    if model == "fault-429":  # RetryInfo comes from the vendor's retry-after header
        assert details.retry_after == pytest.approx(RETRY_AFTER_SECONDS)
    if model == "fault-429-reset":  # ... else from its rate-limit headers
        assert details.retry_after == pytest.approx(RATE_LIMIT_RESET_SECONDS, abs=5)
    if model == "fault-429-odd-header":  # ... and a header no one can read is not INTERNAL
        assert details.retry_after == 1.0
    if model == "fault-context":
        assert "context length" in message
    if model == "missing":
        assert "no-such-model" in message
    if model == "fault-400":  # the provider's own words
        assert "Invalid value: 'seed'" in message


def test_anthropic_overloaded_error_inside_a_stream_is_unavailable(
    cloud: dict[str, ServerProcess],
) -> None:
    code, message, details = failure(
        lambda: stream(cloud["anthropic"], chat("fault-overloaded-midstream"))
    )
    assert (code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_OVERLOADED")
    assert "overloaded" in message


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("openai", grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        ("anthropic", grpc.StatusCode.RESOURCE_EXHAUSTED, "PROVIDER_RATE_LIMITED"),
        # Ollama's error lines carry no type: a broken stream, which the router resumes.
        ("ollama", grpc.StatusCode.UNAVAILABLE, "PROVIDER_STREAM_BROKEN"),
    ],
)
def test_an_error_event_inside_a_stream_goes_through_the_same_table(
    kind: str, code: grpc.StatusCode, reason: str, cloud: dict[str, ServerProcess]
) -> None:
    got_code, message, details = failure(
        lambda: stream(cloud[kind], chat("fault-ratelimit-midstream"))
    )
    assert (got_code, details.reason) == (code, reason), message


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_first_byte_past_the_deadline_is_deadline_exceeded(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    request = chat("fault-slow", request_id=request_id)
    code, _, _ = failure(lambda: generate(cloud[kind], request, timeout=DEADLINE))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    # The model server hung up: the vendor's first byte (after 5 s) found no one.
    assert vendors.received(request_id).client_went_away


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_trickling_past_the_deadline_is_cut_off(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    # A token every 50 ms never trips a per-read HTTP timeout; the deadline still ends it.
    request_id = new_request_id()
    request = chat("slow-stream", request_id=request_id)
    code, _, _ = failure(lambda: stream(cloud[kind], request, timeout=DEADLINE))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert vendors.received(request_id).client_went_away  # long before its 200 tokens


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_the_grpc_deadline_becomes_the_http_timeout(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    generate(cloud[kind], chat("ok", request_id=request_id), timeout=7.0)
    # The SDKs announce the read timeout they use in a header.
    headers = vendors.received(request_id).headers
    sent = float(headers.get("x-stainless-read-timeout") or headers["x-stainless-timeout"])
    # The grpc-timeout header is coarse (gRPC rounds it up to whole units), so the
    # server's remaining time can exceed the client's by a few milliseconds; the
    # SDK's default (600 s) would be far above.
    assert 0 < sent <= 7.1


@pytest.mark.parametrize("kind", KINDS)
def test_the_sdk_does_not_retry_behind_the_routers_back(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    request_id = new_request_id()
    code, _, _ = failure(lambda: generate(cloud[kind], chat("fault-500", request_id=request_id)))
    assert code == grpc.StatusCode.UNAVAILABLE
    # The model server answered after the vendor's 500: any SDK retry came before.
    assert sum(1 for r in vendors.requests if r.carries(request_id)) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_a_stream_closes_the_http_stream(
    kind: str, cloud: dict[str, ServerProcess], vendors: FakeVendors
) -> None:
    channel, stub = _stub(cloud[kind])
    request_id = new_request_id()
    with channel:
        call = stub.StreamGenerate(
            pb.StreamGenerateRequest(
                model="slow-stream",
                messages=[pb.ChatMessage(role="user", content=f"{kind} {request_id}")],
            ),
            timeout=30,
        )
        received = 0
        for message in call:
            received += len(message.text)
            if received > 10:
                break
        call.cancel()  # type: ignore[no-untyped-call]
    # Without the close the vendor would stream all 200 ticks (10 s) to a reader
    # that is gone: unfinished within the wait, or finished without going away.
    record = vendors.received(request_id, timeout=8)
    assert record.client_went_away  # the vendor stopped generating long before 200 tokens


# -- credentials --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_rejected_credentials_tell_the_operator_and_never_show_the_key(
    kind: str, workdir: Path, vendors: FakeVendors
) -> None:
    wrong = workdir / f"wrong-key-{kind}"
    wrong.write_text(WRONG_KEY)
    server = start_modelserver(
        workdir,
        f"cloud-wrong-key-{kind}",
        backend_config(kind, vendors.url, wrong, startup_check=False),
    )
    try:
        # Not an internal error (nor the caller's credentials): an operator's job.
        with (
            Client(server.address, max_retries=0) as client,
            pytest.raises(FailedPreconditionError) as raised,
        ):
            client.chat("ok", [{"role": "user", "content": "hi"}])
        assert raised.value.reason == "PROVIDER_CREDENTIALS_REJECTED"
        assert "api_key" in raised.value.message  # says what the operator must fix
        assert WRONG_KEY not in str(raised.value) + repr(raised.value.details)
        # The model server stops advertising models it cannot serve, so a
        # router sends the next request elsewhere; a direct one learns why.
        assert health_status(server.address, "ok") == "NOT_SERVING"
        code, message, _ = failure(lambda: generate(server, chat("fault-500")))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "rejected the model server's API key" in message
        assert WRONG_KEY not in message
    finally:
        server.stop()
    assert WRONG_KEY not in server.log()


def test_a_startup_check_with_a_wrong_key_starts_not_serving(
    workdir: Path, vendors: FakeVendors
) -> None:
    wrong = workdir / "wrong-key-startup"
    wrong.write_text(WRONG_KEY)
    server = start_modelserver(
        workdir,
        "cloud-wrong-key-startup",
        backend_config("openai", vendors.url, wrong, probe_interval_seconds=60),
        wait=False,
    )
    try:
        deadline = time.monotonic() + 30
        while "rejected" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health_status(server.address) == "NOT_SERVING"
        channel, stub = _stub(server)
        with channel:
            models = stub.ListModels(pb.ListModelsRequest(), timeout=5).models
        assert {m.status for m in models} == {pb.MODEL_STATUS_UNAVAILABLE}
    finally:
        server.stop()
    assert WRONG_KEY not in server.log()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_fixed_key_file_is_picked_up_without_a_restart(
    kind: str, workdir: Path, vendors: FakeVendors
) -> None:
    key_file = workdir / f"rotated-key-{kind}"
    key_file.write_text(WRONG_KEY)
    server = start_modelserver(
        workdir,
        f"cloud-rotated-key-{kind}",
        backend_config(kind, vendors.url, key_file, probe_interval_seconds=0.5),
        wait=False,
    )
    try:
        deadline = time.monotonic() + 30
        while "rejected" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health_status(server.address, "ok") == "NOT_SERVING"
        key_file.write_text(VALID_KEY + "\n")  # the operator fixes the mounted secret
        server.wait_serving("ok", timeout=20)  # the next probe reads it and succeeds
        assert generate(server, chat("ok")).text == f"Hello from {kind}: hi there"
    finally:
        server.stop()
    assert WRONG_KEY not in server.log() and VALID_KEY not in server.log()


def test_the_api_key_can_come_from_an_environment_variable(
    workdir: Path, vendors: FakeVendors
) -> None:
    config = backend_config("anthropic", vendors.url, Path("/unused"))
    del config["backend"]["api_key_file"]
    config["backend"]["api_key_env"] = "FAKE_ANTHROPIC_KEY"
    path = workdir / "cloud-env-key.yaml"
    from conftest import write_config

    write_config(path, config)
    server = ServerProcess(
        "cloud-env-key",
        "switchyard_modelserver",
        path,
        free_port(),
        workdir,
        extra_env={"FAKE_ANTHROPIC_KEY": VALID_KEY},
    )
    try:
        server.wait_serving()
        assert generate(server, chat("ok")).text == "Hello from anthropic: hi there"
    finally:
        server.stop()


def test_a_missing_key_variable_is_a_config_error_naming_it(workdir: Path) -> None:
    config = backend_config("anthropic", "http://127.0.0.1:9", Path("/unused"))
    del config["backend"]["api_key_file"]
    config["backend"]["api_key_env"] = "SWITCHYARD_TEST_UNSET_KEY"
    server = start_modelserver(workdir, "cloud-unset-key", config, wait=False)
    assert server.process.wait(30) != 0
    server.stop()
    assert "SWITCHYARD_TEST_UNSET_KEY is not set" in server.log()


def test_no_log_line_of_any_cloud_server_contains_the_key(
    cloud: dict[str, ServerProcess],
) -> None:
    for kind, server in cloud.items():
        generate(server, chat("ok"))
        assert VALID_KEY not in server.log(), kind


# -- health -------------------------------------------------------------------


def test_consecutive_failures_turn_a_model_not_serving_until_a_probe_succeeds(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> None:
    config = backend_config("openai", vendors.url, key_file)
    config["backend"].update(unhealthy_after_failures=2, probe_interval_seconds=1.5)
    server = start_modelserver(workdir, "cloud-health", config)
    try:
        for _ in range(2):
            failure(lambda: generate(server, chat("fault-500")))
        assert health_status(server.address, "fault-500") == "NOT_SERVING"
        assert health_status(server.address, "ok") == "SERVING"  # the others serve on
        code, message, _ = failure(lambda: generate(server, chat("fault-500")))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "2 consecutive provider failures" in message  # refused without a vendor call
        server.wait_serving("fault-500", timeout=15)  # the provider answers its probe again
    finally:
        server.stop()


def test_without_the_startup_check_an_unreachable_provider_still_starts_serving(
    workdir: Path, key_file: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_modelserver(
        workdir, "cloud-no-check", backend_config("openai", dead, key_file, startup_check=False)
    )
    try:
        code, _, details = failure(lambda: generate(server, chat("ok")))
        assert (code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNREACHABLE")
    finally:
        server.stop()


def test_with_the_startup_check_an_unreachable_provider_is_not_serving(
    workdir: Path, key_file: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_modelserver(
        workdir, "cloud-check", backend_config("ollama", dead, key_file), wait=False
    )
    try:
        deadline = time.monotonic() + 30
        while "unavailable" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health_status(server.address) == "NOT_SERVING"
    finally:
        server.stop()


def test_an_ollama_model_that_is_not_pulled_is_unavailable(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> None:
    config = backend_config("ollama", vendors.url, key_file)
    config["backend"]["models"] = [{"id": "ok"}, {"id": "absent", "provider_model": "absent"}]
    server = start_modelserver(workdir, "cloud-ollama-tags", config)
    try:
        channel, stub = _stub(server)
        with channel:
            models = {m.id: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
        assert models["ok"].status == pb.MODEL_STATUS_READY  # "ok:latest" in /api/tags
        assert models["absent"].status == pb.MODEL_STATUS_UNAVAILABLE
    finally:
        server.stop()


def test_ollama_discovery_serves_every_model_in_api_tags(
    workdir: Path, vendors: FakeVendors, key_file: Path
) -> None:
    config = backend_config("ollama", vendors.url, key_file)
    config["backend"].update(
        discover=True, models=[{"id": "mine", "provider_model": "ok", "context_length": 512}]
    )
    server = start_modelserver(workdir, "cloud-ollama-discover", config)
    try:
        channel, stub = _stub(server)
        with channel:
            models = {m.id: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
        # The configured model keeps its card; the rest come from /api/tags and /api/show.
        assert set(models) == {"mine"} | (set(MODELS) - {"ok"})
        assert models["mine"].context_length == 512
        assert models["slow-stream"].context_length == OLLAMA_CONTEXT_LENGTH
        assert models["slow-stream"].status == pb.MODEL_STATUS_READY
        assert health_status(server.address, "fault-500") == "SERVING"
        assert generate(server, chat("mine")).text == "Hello from ollama: hi there"
        # A discovered model is served like a configured one, prompts included.
        _, _, details = failure(
            lambda: generate(server, pb.GenerateRequest(model="fault-context", prompt="x"))
        )
        assert details.reason == "CONTEXT_LENGTH_EXCEEDED"
    finally:
        server.stop()
