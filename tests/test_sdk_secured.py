"""The SDK, the CLI and `switchyard bench` against a secured router on 127.0.0.1:
TLS with certificates made here (trustme), API keys, a rate-limited key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import secretscan
import trustme
from conftest import ROUTER, SCRIPTED_MODELS, write_config
from processes import ServerProcess, free_port

from switchyard import (
    AsyncClient,
    AuthenticationError,
    Client,
    RateLimitError,
    UnavailableError,
    UnimplementedError,
    UsageEvent,
)
from switchyard.cli import _parser
from switchyard.client import API_KEY_ENV, MAX_RETRY_WAIT
from switchyard.errors import from_rpc_error
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc

# Two requests a minute, one at once: the second waits about 30 s.
SLOW_LIMIT = {"requests_per_minute": 2, "request_burst": 1}


@dataclass(frozen=True)
class Secured:
    router: ServerProcess
    ca: Path
    key: str  # may call anything, no limit
    key_file: Path  # holds ``key``
    limited_key: str  # SLOW_LIMIT

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.read_bytes())


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, scripted_server: ServerProcess
) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("sdk-secured")
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1", "localhost")
    ca, cert, private = folder / "ca.pem", folder / "server.crt", folder / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    private.write_bytes(leaf.private_key_pem.bytes())
    key, limited = (f"sk-test-{secrets.token_urlsafe(24)}" for _ in range(2))
    secretscan.register(key, limited)
    secretscan.watch(folder)
    key_file = folder / "api-key"
    key_file.write_text(key + "\n")  # as a mounted Secret often ends
    config = {
        "tls": {"cert_file": str(cert), "key_file": str(private)},
        "clusters": {"scripted": {"endpoints": [scripted_server.address]}},
        "routes": [
            {"model": m["id"], "targets": [{"cluster": "scripted"}]} for m in SCRIPTED_MODELS
        ],
        "auth": {
            "keys": [
                {"id": "full", "sha256": _sha256(key)},
                {"id": "slow", "sha256": _sha256(limited), **SLOW_LIMIT},
            ]
        },
    }
    path = write_config(folder / "secured-router.yaml", config)
    router = ServerProcess("secured-router", ROUTER, path, free_port(), folder)
    made = Secured(router, ca, key, key_file, limited)
    try:
        with grpc.secure_channel(router.address, made.credentials()) as channel:
            router.wait_serving(timeout=60, channel=channel)
        yield made
    finally:
        router.stop()


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "switchyard.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
        check=False,
    )


def test_the_async_client_sends_its_api_key_and_speaks_tls(secured: Secured) -> None:
    async def calls() -> tuple[str, list[str]]:
        async with AsyncClient(
            secured.router.address, api_key=secured.key, credentials=secured.credentials()
        ) as client:
            answer = await client.generate("canned", "hello")
            models = [m.id for m in await client.list_models()]
        return answer.text, models

    text, models = asyncio.run(calls())
    assert text == "The capital of France is Paris."
    assert set(models) == {m["id"] for m in SCRIPTED_MODELS}

    async def without_key() -> None:
        async with AsyncClient(
            secured.router.address, credentials=secured.credentials(), max_retries=0
        ) as client:
            await client.generate("canned", "hello")

    with pytest.raises(AuthenticationError):
        asyncio.run(without_key())


def test_a_rate_limited_call_is_not_retried_sooner_than_the_server_asked(
    secured: Secured,
) -> None:
    events: list[UsageEvent] = []
    with Client(
        secured.router.address,
        api_key=secured.limited_key,
        credentials=secured.credentials(),
        max_retries=3,
        timeout=None,
        on_usage=events.append,
    ) as client:
        client.generate("canned", "hello")  # the one request the bucket holds
        with pytest.raises(RateLimitError) as raised:
            client.generate("canned", "hello")
    assert raised.value.reason == "RATE_LIMITED"
    retry_after = raised.value.retry_after
    assert retry_after is not None and retry_after > MAX_RETRY_WAIT
    # Told to wait ~30 s, more than the client waits: raised at once, never retried early.
    assert events[-1].attempts == 1
    assert events[-1].error is raised.value


def test_the_cli_reaches_a_tls_router_with_an_api_key_file(secured: Secured) -> None:
    target = ["--target", secured.router.address]
    listed = _cli(
        *target, "models", "--tls-ca", str(secured.ca), "--api-key-file", str(secured.key_file)
    )
    assert listed.returncode == 0, listed.stderr
    assert "canned" in listed.stdout
    # The options may come before the subcommand too; the key from the environment.
    generated = _cli(
        *target, "--tls-ca", str(secured.ca), "generate", "canned", "hi",
        env={API_KEY_ENV: secured.key},
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == "The capital of France is Paris."
    endpoints = _cli(
        *target, "endpoints", "--tls-ca", str(secured.ca), "--api-key-file", str(secured.key_file)
    )
    assert endpoints.returncode == 0, endpoints.stderr
    assert "scripted" in endpoints.stdout


def test_the_cli_says_what_is_wrong_with_its_connection_options(
    secured: Secured, tmp_path: Path
) -> None:
    target = ["--target", secured.router.address]
    no_key = _cli(*target, "models", "--tls-ca", str(secured.ca))
    assert no_key.returncode == 1
    assert "UNAUTHENTICATED" in no_key.stderr
    missing = _cli(*target, "models", "--tls-ca", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2
    assert f"--tls-ca: cannot read {tmp_path / 'nope.pem'}" in missing.stderr
    half = _cli(*target, "models", "--tls-ca", str(secured.ca), "--tls-cert", str(secured.ca))
    assert half.returncode == 2
    assert "--tls-cert and --tls-key go together" in half.stderr
    empty = tmp_path / "empty-key"
    empty.write_text("\n")
    assert "is empty" in _cli(*target, "models", "--api-key-file", str(empty)).stderr
    # Neither the key nor its file's content is echoed in any of these messages.
    for result in (no_key, missing, half):
        assert secured.key not in result.stdout + result.stderr


def test_bench_loads_a_tls_router_with_an_api_key(secured: Secured, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    common = ["--target", secured.router.address, "bench", "--model", "canned", "--requests", "4"]
    common += ["--tls-ca", str(secured.ca), "--connect-timeout", "20"]
    refused = _cli(*common)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr
    ran = _cli(*common, "--stream", "--api-key-file", str(secured.key_file), "--json", str(out))
    assert ran.returncode == 0, ran.stderr
    result = json.loads(out.read_text())["results"][0]
    assert result["requests"] == {"total": 4, "ok": 4, "errors": 0}


def test_a_method_the_server_lacks_is_unimplemented_not_a_server_failure(
    scripted_server: ServerProcess,
) -> None:
    # A model server does not serve the router's admin service.
    with grpc.insecure_channel(scripted_server.address) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=10)
    error = from_rpc_error(raised.value)
    assert isinstance(error, UnimplementedError)
    assert not isinstance(error, UnavailableError)


def test_every_readme_cli_line_parses() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    lines = [line.removeprefix("$ ") for line in readme.splitlines()]
    commands = [
        shlex.split(line, comments=True)[1:] for line in lines if line.startswith("switchyard ")
    ]
    assert len(commands) >= 9
    secured_lines = 0
    for command in commands:
        args = _parser().parse_args(command)  # exits (fails the test) on a bad line
        if "--tls-ca" in command:
            secured_lines += 1
            assert args.tls_ca == command[command.index("--tls-ca") + 1]
            assert args.api_key_file == command[command.index("--api-key-file") + 1]
    assert secured_lines == 1
