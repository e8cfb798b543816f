"""The HTTP front inherits the router's request path: API keys, rate limits, failover,
cancellation, deadlines, tracing, TLS and drain, each checked with the official SDKs
against live routers and model servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
import trustme
from conftest import start_modelserver, start_router
from curl import curl
from fleet import Fleet, endpoints, wait_access_lines, wait_healthy
from otlp import TRACE_ID, TRACEPARENT, TRACESTATE, Receiver, tracing_env
from processes import ServerProcess, free_port, wait_until

CHAT: Any = [{"role": "user", "content": "hello"}]
WORDS = "one two three four five six seven eight nine ten"
LONG = 3000  # tokens of the slow model: ~10 s, far past every wait here


def _with_http(config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    port = free_port()
    return {**config, "http_listen": f"127.0.0.1:{port}"}, f"http://127.0.0.1:{port}"


_JSON_HEADERS = {"content-type": "application/json"}


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# -- keys and limits ---------------------------------------------------------


def test_keys_are_the_routers_bearer_or_x_api_key_with_models_and_rate_limits(
    fleet: Fleet,
) -> None:
    server = fleet.scripted("s", [{"id": "m", "reply": "ok"}, {"id": "other", "reply": "no"}])
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [
                {"model": "m", "targets": [{"cluster": "pool"}]},
                {"model": "other", "targets": [{"cluster": "pool"}]},
            ],
            "auth": {
                "keys": [
                    {"id": "app", "sha256": _sha256("sk-app"), "models": ["m"]},
                    {"id": "metered", "sha256": _sha256("sk-metered"), "requests_per_minute": 2},
                ]
            },
        }
    )
    wait_healthy(fleet.router(config), (("authorization", "Bearer sk-metered"),))
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-app", max_retries=0) as client:
        assert client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content
        assert [m.id for m in client.models.list()] == ["m"]  # only what the key may use
        with pytest.raises(openai.PermissionDeniedError, match="may not use model 'other'"):
            client.chat.completions.create(model="other", messages=CHAT)
    with anthropic.Anthropic(base_url=url, api_key="sk-app", max_retries=0) as claude:  # x-api-key
        assert claude.messages.create(model="m", max_tokens=5, messages=CHAT).content
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError, match="invalid API key") as refused:
            stranger.chat.completions.create(model="m", messages=CHAT)
        assert "sk-wrong" not in str(refused.value.body)
    status, _, body = curl(f"{url}/v1/chat/completions", {"model": "m", "messages": CHAT})
    assert status == 401 and "missing API key" in body
    with openai.OpenAI(base_url=f"{url}/v1", api_key="sk-metered", max_retries=0) as metered:
        for _ in range(2):
            metered.chat.completions.create(model="m", messages=CHAT)
        with pytest.raises(openai.RateLimitError, match="requests_per_minute") as limited:
            metered.chat.completions.create(model="m", messages=CHAT)
    retry_after = int(limited.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 30  # one request frees up every 30 s
    claude = anthropic.Anthropic(base_url=url, api_key="sk-metered", max_retries=0)
    with claude, pytest.raises(anthropic.RateLimitError) as refused_too:
        claude.messages.create(model="m", max_tokens=5, messages=CHAT)
    assert refused_too.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_body_over_the_limit_is_413_in_each_vendors_shape(fleet: Fleet) -> None:
    server = fleet.scripted("s", [{"id": "m", "reply": "ok"}])
    config, url = _with_http(
        {
            "max_message_bytes": 4096,
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    wait_healthy(fleet.router(config))
    big: Any = [{"role": "user", "content": "x" * 5000}]
    too_large = re.compile(r"invalid request: body: is 5\d\d\d bytes; at most 4096")
    with anthropic.Anthropic(base_url=url, api_key="x", max_retries=0) as claude:
        with pytest.raises(anthropic.RequestTooLargeError) as refused:
            claude.messages.create(model="m", max_tokens=5, messages=big)
        body: Any = refused.value.body
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        assert too_large.fullmatch(body["error"]["message"])
        assert claude.messages.create(model="m", max_tokens=5, messages=CHAT).content
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    with client, pytest.raises(openai.APIStatusError) as status_error:
        client.chat.completions.create(model="m", messages=big)
    assert status_error.value.status_code == 413
    error: Any = status_error.value.body
    assert too_large.fullmatch(error.pop("message"))
    assert error == {"type": "invalid_request_error", "param": "body", "code": "request_too_large"}
    # Sent in chunks, with no length announced: refused once it is past the limit.
    chunked = json.dumps({"model": "m", "messages": big})
    status, _, text = curl(f"{url}/v1/chat/completions", chunked, "transfer-encoding: chunked")
    assert status == 413 and json.loads(text)["error"]["message"].endswith("more than 4096 bytes")


# -- failover, no endpoint, deadlines ----------------------------------------


def test_kill_9_of_one_replica_fails_no_http_request(fleet: Fleet) -> None:
    models = [{"id": "m", "reply": WORDS, "token_delay_ms": 10}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [a.address, b.address]}},
            # resume: a stream cut mid-way continues on the other replica (else it
            # would end with an error event, as the route does not resume).
            "routes": [{"model": "m", "resume": True, "targets": [{"cluster": "pool"}]}],
        }
    )
    wait_healthy(fleet.router(config))
    answers: list[str] = []

    async def run() -> None:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:

            async def unary(count: int) -> None:
                for _ in range(count):
                    answer = await client.chat.completions.create(model="m", messages=CHAT)
                    answers.append(answer.choices[0].message.content or "")

            async def streams(count: int) -> None:
                for _ in range(count):
                    chunks = await client.chat.completions.create(
                        model="m", messages=CHAT, stream=True
                    )
                    answers.append(
                        "".join([c.choices[0].delta.content or "" async for c in chunks])
                    )

            batch = asyncio.gather(*(unary(10) for _ in range(3)), *(streams(10) for _ in range(3)))
            while len(answers) < 10:  # noqa: ASYNC110 - waiting on the workers' progress
                await asyncio.sleep(0.01)
            a.process.kill()  # kill -9 while requests run on it
            await batch

    asyncio.run(run())
    assert answers == [WORDS] * 60


def test_a_resume_route_continues_an_http_stream_after_kill_9(
    fleet: Fleet, models_dir: Path
) -> None:
    """The HTTP front's stream is the router's: a resume route continues it on another
    replica, and the caller sees one unbroken stream with the uninterrupted greedy text."""
    servers = []
    for label in ("a", "b"):
        directory = fleet.workdir / f"models-{label}"
        directory.mkdir()
        (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
        servers.append(
            fleet.modelserver(
                label,
                {"backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1}},
            )
        )
    config, url = _with_http(
        {
            "clusters": {"cpu": {"endpoints": [s.address for s in servers]}},
            "routes": [{"model": "tiny-slow", "resume": True, "targets": [{"cluster": "cpu"}]}],
        }
    )
    router = wait_healthy(fleet.router(config))
    with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
        expected = client.completions.create(
            model="tiny-slow", prompt="hello world", max_tokens=400, temperature=0
        )
        stream = client.completions.create(
            model="tiny-slow", prompt="hello world", max_tokens=400, temperature=0, stream=True
        )
        chunks = [next(stream) for _ in range(5)]
        serving = [e.address for e in endpoints(router) if e.outstanding_requests == 1]
        assert len(serving) == 1
        next(s for s in servers if s.address == serving[0]).process.kill()
        chunks += list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_the_response_cache_answers_http_requests_and_says_so(fleet: Fleet) -> None:
    server = fleet.scripted("s", [{"id": "m", "reply": "cached words"}])
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}], "cache": {}}],
        }
    )
    wait_healthy(fleet.router(config))
    request = {"model": "m", "messages": CHAT, "temperature": 0}
    first = curl(f"{url}/v1/chat/completions", request)
    again = curl(f"{url}/v1/chat/completions", request)
    fresh = curl(f"{url}/v1/chat/completions", request, "cache-control: no-cache")
    streamed = curl(f"{url}/v1/chat/completions", {**request, "stream": True})
    streamed_again = curl(f"{url}/v1/chat/completions", {**request, "stream": True})
    assert first[0] == 200, first[2]
    assert "x-switchyard-cache" not in first[1]
    assert "x-switchyard-cache: hit" in again[1]
    assert json.loads(again[2])["choices"][0]["message"]["content"] == "cached words"
    assert "x-switchyard-cache" not in fresh[1]
    assert "x-switchyard-cache" not in streamed[1]  # a stream is its own request
    assert "x-switchyard-cache: hit" in streamed_again[1]
    assert "cached words" in "".join(
        json.loads(d)["choices"][0]["delta"].get("content", "")
        for d in (line[6:] for line in streamed_again[2].splitlines() if line.startswith("data: {"))
    )


def test_the_cache_keys_on_tools_and_replays_tool_calls_but_ignores_callers_metadata(
    fleet: Fleet,
) -> None:
    """What shapes the answer keys the cache (the tools offered); what does not (the
    caller's ``user`` and ``metadata``) does not. An answer that calls a tool is
    replayed like any other."""
    tool_call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    server = fleet.scripted("s", [{"id": "m", "reply": "sunny", "tool_call": tool_call}])
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}], "cache": {}}],
        }
    )
    wait_healthy(fleet.router(config))
    weather: dict[str, Any] = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    request = {"model": "m", "messages": CHAT, "temperature": 0, "tools": [weather]}
    status, first_headers, first = curl(f"{url}/v1/chat/completions", request)
    assert status == 200, first
    assert json.loads(first)["choices"][0]["finish_reason"] == "tool_calls"
    assert "x-switchyard-cache" not in first_headers
    tagged = {**request, "user": "someone", "metadata": {"team": "x"}}
    _, headers, again = curl(f"{url}/v1/chat/completions", tagged)
    assert "x-switchyard-cache: hit" in headers
    assert (
        json.loads(again)["choices"][0]["message"]["tool_calls"]
        == json.loads(first)["choices"][0]["message"]["tool_calls"]
    )
    described = {**weather, "function": {**weather["function"], "description": "Weather."}}
    _, headers, _ = curl(f"{url}/v1/chat/completions", {**request, "tools": [described]})
    assert "x-switchyard-cache" not in headers  # other tools: another request


def test_no_healthy_endpoint_is_503_with_retry_after(fleet: Fleet) -> None:
    config, url = _with_http(
        {
            "clusters": {"gone": {"endpoints": [f"127.0.0.1:{free_port()}"]}},
            "routes": [{"model": "m", "targets": [{"cluster": "gone"}]}],
        }
    )
    fleet.router(config)
    status, headers, body = curl(f"{url}/v1/chat/completions", {"model": "m", "messages": CHAT})
    assert status == 503 and "retry-after: 1" in headers
    assert "no healthy model server for model 'm'" in body
    status, _, body = curl(f"{url}/v1/messages", {"model": "m", "max_tokens": 5, "messages": CHAT})
    assert status == 503 and '"type":"overloaded_error"' in body


@pytest.fixture
def slow_router(fleet: Fleet, slow_server: ServerProcess) -> str:
    config, url = _with_http(
        {
            "clusters": {"cpu": {"endpoints": [slow_server.address]}},
            "routes": [{"model": "tiny-slow", "targets": [{"cluster": "cpu"}]}],
        }
    )
    wait_healthy(fleet.router(config))
    return url


def test_a_client_that_disconnects_stops_the_generation(
    slow_router: str, slow_server: ServerProcess
) -> None:
    with openai.OpenAI(base_url=f"{slow_router}/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="tiny-slow", messages=CHAT, max_tokens=LONG, temperature=0, stream=True
        )
        for received, _ in enumerate(stream, start=1):
            if received == 3:
                break
        stream.close()  # the connection goes: the router cancels the upstream call
        with pytest.raises(openai.APITimeoutError):  # a unary call the client gives up on
            client.chat.completions.create(
                model="tiny-slow", messages=CHAT, max_tokens=LONG, temperature=0, timeout=1.0
            )
        # The model is free at once: were either generation still running, this one
        # would wait behind it for seconds.
        answer = client.chat.completions.create(
            model="tiny-slow", messages=CHAT, max_tokens=4, timeout=5.0
        )
    assert answer.usage is not None and answer.usage.completion_tokens == 4
    stopped = wait_access_lines(slow_server, 3)[:2]
    assert [o["code"] for o in stopped] == ["CANCELLED", "CANCELLED"]
    assert all(0 <= int(o["completion_tokens"]) < LONG for o in stopped)


def test_the_timeout_header_is_the_deadline_and_passing_it_is_504(
    slow_router: str, slow_server: ServerProcess
) -> None:
    status, _, body = curl(
        f"{slow_router}/v1/chat/completions",
        {"model": "tiny-slow", "messages": CHAT, "max_tokens": LONG},
        "x-switchyard-timeout: 1",
    )
    assert (status, json.loads(body)["error"]["type"]) == (504, "timeout_error"), body
    stopped = wait_access_lines(slow_server, 1)[0]
    assert stopped["code"] in {"DEADLINE_EXCEEDED", "CANCELLED"}
    assert int(stopped["completion_tokens"]) < LONG  # stopped at the deadline, not finished
    status, _, body = curl(
        f"{slow_router}/v1/chat/completions",
        {"model": "tiny-slow", "messages": CHAT},
        "x-switchyard-timeout: soon",
    )
    assert status == 400 and '"param":"x-switchyard-timeout"' in body


# -- tracing, TLS, drain -----------------------------------------------------


def test_traceparent_and_tracestate_continue_the_callers_trace(
    workdir: Path,
    receiver: tuple[Receiver, str],  # the fixture imported above
) -> None:
    collector, endpoint = receiver
    modelserver = start_modelserver(
        workdir,
        "http-traced-modelserver",
        {"backend": {"kind": "scripted", "models": [{"id": "m", "reply": "ok"}]}},
        extra_env=tracing_env(endpoint, OTEL_SERVICE_NAME="modelserver"),
    )
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [modelserver.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    router_env = tracing_env(endpoint, OTEL_SERVICE_NAME="router")
    router = wait_healthy(start_router(workdir, "http-traced-router", config, extra_env=router_env))
    try:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(
                model="m",
                messages=CHAT,
                extra_headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
            )
        spans = collector.wait_for(3)
        request = next(
            s for s in spans if s["service"] == "router" and s["kind"] == "SPAN_KIND_SERVER"
        )
        assert request["trace_id"] == TRACE_ID
        assert request["parent"] == TRACEPARENT.split("-")[2]
        assert request["attributes"]["http.route"] == "/v1/chat/completions"
        # The caller's vendor entries ride along the whole trace, model server included.
        assert request["trace_state"] == TRACESTATE
        served = [s for s in spans if s["service"] == "modelserver"]
        assert served and all(s["trace_id"] == TRACE_ID for s in served)
        assert all(s["trace_state"] == TRACESTATE for s in served)
    finally:
        router.stop()
        modelserver.stop()


def _mount_secret(folder: Path, leaf: trustme.LeafCert, version: str) -> None:
    """Writes ``leaf`` as a Kubernetes Secret mount does: files in a new timestamped
    folder, ``..data`` swapped to it at once, the previous folder deleted."""
    target = folder / f"..{version}"
    target.mkdir()
    (target / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    (target / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    data = folder / "..data"
    previous = data.resolve() if data.is_symlink() else None
    swap = folder / "..data_tmp"
    swap.symlink_to(target.name)
    swap.replace(data)
    for name in ("tls.crt", "tls.key"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")
    if previous is not None:
        for old in previous.iterdir():
            old.unlink()
        previous.rmdir()


def _served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate the HTTP front presents to a new connection (DER)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    return served


def _der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def test_a_rotated_certificate_reaches_new_https_connections_without_a_restart(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A Secret rotated under a running router: new HTTPS connections get the new
    certificate within seconds, a stream in flight on the old one finishes whole, and
    files that hold no usable certificate leave the last good one in use."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(cafile=ca_file)
    secret = tmp_path / "secret"
    secret.mkdir()
    first, second = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    _mount_secret(secret, first, "1")
    words = " ".join(f"w{i}" for i in range(30))
    server = fleet.scripted("s", [{"id": "m", "reply": words, "token_delay_ms": 100}])
    port = free_port()
    config = {
        "http_listen": f"127.0.0.1:{port}",
        "tls": {"cert_file": str(secret / "tls.crt"), "key_file": str(secret / "tls.key")},
        "clusters": {"pool": {"endpoints": [server.address]}},
        "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
    }
    path = fleet.rewrite_router_config("rotating", config)
    router = ServerProcess("rotating-router", "switchyard_router", path, free_port(), fleet.workdir)
    fleet.servers.append(router)
    with httpx2.Client(verify=context, timeout=60) as https:

        def ready() -> bool:
            try:
                return https.get(f"https://127.0.0.1:{port}/readyz").status_code == 200
            except httpx2.HTTPError:
                return False

        wait_until(ready, "the HTTPS port serving", timeout=30)
        assert _served_certificate(port, context) == _der(first)
        with openai.OpenAI(
            base_url=f"https://127.0.0.1:{port}/v1", api_key="x", max_retries=0, http_client=https
        ) as client:
            stream = client.chat.completions.create(model="m", messages=CHAT, stream=True)
            pieces = [next(iter(stream)).choices[0].delta.content or ""]
            _mount_secret(secret, second, "2")  # mid-stream
            wait_until(
                lambda: _served_certificate(port, context) == _der(second),
                "the rotated certificate served",
                timeout=30,
            )
            pieces += [c.choices[0].delta.content or "" for c in stream if c.choices]
            assert "".join(pieces) == words  # the stream on the old connection finished whole
            answer = client.chat.completions.create(model="m", messages=CHAT)
            assert answer.choices[0].message.content == words
        broken = secret / "..3"
        broken.mkdir()
        (broken / "tls.crt").write_text("not a certificate")
        (broken / "tls.key").write_text("not a key")
        swap = secret / "..data_tmp"
        swap.symlink_to(broken.name)
        swap.replace(secret / "..data")
        wait_until(lambda: "rejected" in router.log(), "the broken files rejected", timeout=30)
    assert _served_certificate(port, context) == _der(second)
    with httpx2.Client(verify=context, timeout=60) as https:
        assert https.get(f"https://127.0.0.1:{port}/readyz").status_code == 200


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_the_http_front_speaks_tls_with_the_listeners_certificate(
    fleet: Fleet, tmp_path: Path, mutual: bool
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file.write_bytes(leaf.private_key_pem.bytes())
    tls: dict[str, str] = {"cert_file": str(cert_file), "key_file": str(key_file)}
    trusting = ssl.create_default_context(cafile=ca_file)
    context = ssl.create_default_context(cafile=ca_file)
    if mutual:
        tls["client_ca_file"] = str(ca_file)
        client_pem = tmp_path / "client.pem"
        ca.issue_cert("app@switchyard.test").private_key_and_cert_chain_pem.write_to_path(
            str(client_pem)
        )
        context.load_cert_chain(client_pem)
    server = fleet.scripted("s", [{"id": "m", "reply": "secret ok"}])
    port = free_port()
    router_config = {
        "http_listen": f"127.0.0.1:{port}",
        "tls": tls,
        "clusters": {"pool": {"endpoints": [server.address]}},
        "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
    }
    path = fleet.rewrite_router_config("router", router_config)
    router = ServerProcess("tls-http-router", "switchyard_router", path, free_port(), fleet.workdir)
    fleet.servers.append(router)
    with httpx2.Client(verify=context) as https:
        deadline = time.monotonic() + 30
        while True:  # the gRPC health check needs TLS too: wait on the HTTP port instead
            try:
                https.get(f"https://127.0.0.1:{port}/readyz").raise_for_status()
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with openai.OpenAI(
            base_url=f"https://127.0.0.1:{port}/v1", api_key="x", max_retries=0, http_client=https
        ) as client:
            answer = client.chat.completions.create(model="m", messages=CHAT)
    assert answer.choices[0].message.content == "secret ok"
    status, _, _ = _plain_get(f"http://127.0.0.1:{port}/healthz")
    assert status != 200  # plaintext is not served on a TLS port
    if mutual:  # a client without a certificate gets no answer
        with httpx2.Client(verify=trusting) as anonymous, pytest.raises(httpx2.HTTPError):
            anonymous.get(f"https://127.0.0.1:{port}/healthz").raise_for_status()


def _plain_get(url: str) -> tuple[int, str, str]:
    try:
        return curl(url)
    except Exception as error:  # curl fails outright: no HTTP answer at all
        return 0, "", str(error)


def test_a_request_while_the_router_starts_is_never_told_it_shuts_down(fleet: Fleet) -> None:
    """From the moment the HTTP port accepts, requests are served: a router that is
    starting is not draining (it answered 503 SHUTTING_DOWN until its health was set)."""
    server = fleet.scripted("s", [{"id": "m", "reply": "ok"}])
    config, url = _with_http(
        {
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"model": "m", "messages": CHAT})
    answers: list[tuple[int, str]] = []
    serving = threading.Event()

    def ask_until_serving() -> None:
        """Asks again and again from before the port listens until well after."""
        after = 0
        while after < 20:
            after += serving.is_set()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                connection.request("POST", "/v1/chat/completions", body, _JSON_HEADERS)
                response = connection.getresponse()
                answers.append((response.status, response.read().decode()))
            except OSError:
                pass  # not listening yet
            finally:
                connection.close()

    caller = threading.Thread(target=ask_until_serving)
    caller.start()
    path = fleet.rewrite_router_config("starting", config)
    router = ServerProcess("starting-router", "switchyard_router", path, free_port(), fleet.workdir)
    fleet.servers.append(router)
    try:
        router.wait_serving()
    finally:
        serving.set()
        caller.join(60)
    assert answers, "no answer at all"
    refused = [text for status, text in answers if "shutting_down" in text]
    assert refused == [], f"{len(refused)} of {len(answers)} told it shuts down"


def test_drain_reports_not_ready_and_finishes_streams_in_flight(fleet: Fleet) -> None:
    server = fleet.scripted("s", [{"id": "drip", "reply": WORDS, "token_delay_ms": 150}])
    config, url = _with_http(
        {
            "drain_grace_seconds": 20,
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "drip", "targets": [{"cluster": "pool"}]}],
        }
    )
    router = wait_healthy(fleet.router(config))
    received: list[str] = []
    started = threading.Event()

    def stream() -> None:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client:
            for chunk in client.chat.completions.create(model="drip", messages=CHAT, stream=True):
                started.set()
                received.append(chunk.choices[0].delta.content or "")

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(15)
    router.signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while curl(f"{url}/readyz")[0] != 503:
        assert time.monotonic() < deadline, "readyz never said 503 while draining"
        time.sleep(0.05)
    reader.join(30)
    assert "".join(received) == WORDS
    assert router.process.wait(30) == 0
