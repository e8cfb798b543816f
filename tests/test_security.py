"""Security and limits, against real servers on 127.0.0.1: TLS and mutual TLS
handshakes with certificates made here, API keys, per-key rate limits, input
and connection limits, and no key or prompt in any log."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import grpc
import pytest
import secretscan
import trustme
from conftest import MODELSERVER, ROUTER, SCRIPTED_MODELS, write_config
from grpc_health.v1 import health as health_servicer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from otlp import Receiver
from processes import ServerProcess, free_port, wait_until

from switchyard import AuthenticationError, Client, PermissionDeniedError, RateLimitError
from switchyard.client import API_KEY_ENV
from switchyard.status import parse_details
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc
from switchyard_common.configfile import ConfigError, load_config
from switchyard_common.listener import CertificateFiles
from switchyard_common.status import StatusError
from switchyard_modelserver.backends.registry import backend_class
from switchyard_modelserver.config import ModelServerConfig
from switchyard_router.config import APIKeyConfig, RouterConfig
from switchyard_router.fleet import KeyLimits
from switchyard_router.fleet.rates import KeyLimiter

REPO = Path(__file__).resolve().parent.parent
# A channel of its own connection (gRPC shares connections between like channels).
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
# A prompt that must never reach a log.
CANARY_PROMPT = f"canary-prompt-{secrets.token_hex(8)}"


# Certificates -----------------------------------------------------------------


@dataclass
class Identity:
    cert: Path
    key: Path

    def pems(self) -> tuple[bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes()


@dataclass
class PKI:
    ca: Path
    server: Identity  # for 127.0.0.1 and localhost
    client: Identity
    other_ca: Path  # a CA nobody trusts
    other_client: Identity  # signed by other_ca

    def channel(
        self, address: str, *, ca: Path | None = None, client: Identity | None = None
    ) -> grpc.Channel:
        key, chain = client.pems() if client else (None, None)
        credentials = grpc.ssl_channel_credentials(
            (ca or self.ca).read_bytes(), private_key=key, certificate_chain=chain
        )
        return grpc.secure_channel(address, credentials, options=_OWN_CONNECTION)


def _write_identity(folder: Path, name: str, cert: trustme.LeafCert) -> Identity:
    identity = Identity(folder / f"{name}.crt", folder / f"{name}.key")
    _replace(identity.cert, b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    _replace(identity.key, cert.private_key_pem.bytes())
    return identity


def _replace(path: Path, data: bytes) -> None:
    """Writes a file at once (as a Kubernetes Secret update swaps its files)."""
    temporary = path.with_suffix(path.suffix + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _own_ca(folder: Path, host: str) -> tuple[Path, Identity]:
    """A new CA (its certificate file) and a server identity it signed for ``host``."""
    folder.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return folder / "ca.pem", _write_identity(folder, "server", ca.issue_cert(host))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")  # under the folder the log scan watches


@pytest.fixture(scope="module")
def pki(folder: Path) -> PKI:
    ca, other = trustme.CA(), trustme.CA()
    certs = folder / "pki"
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    other.cert_pem.write_to_path(str(certs / "other-ca.pem"))
    return PKI(
        ca=certs / "ca.pem",
        server=_write_identity(certs, "server", ca.issue_cert("127.0.0.1", "localhost")),
        client=_write_identity(certs, "client", ca.issue_cert("router@switchyard.test")),
        other_ca=certs / "other-ca.pem",
        other_client=_write_identity(certs, "other-client", other.issue_cert("x@example.com")),
    )


# Servers ----------------------------------------------------------------------


def _start(
    folder: Path,
    name: str,
    module: str,
    config: dict[str, Any],
    channel: Any = None,
    metadata: tuple[tuple[str, str], ...] = (),
    env: dict[str, str] | None = None,
) -> ServerProcess:
    path = write_config(folder / f"{name}.yaml", config)
    server = ServerProcess(
        name,
        module,
        path,
        free_port(),
        folder,
        extra_env=env,
        extra_args=["--log-level", "DEBUG"],
    )
    if channel is None:
        server.wait_serving(timeout=60, metadata=metadata)
    else:
        with channel(server.address) as opened:
            server.wait_serving(timeout=60, channel=opened, metadata=metadata)
    return server


def _scripted(**extra: Any) -> dict[str, Any]:
    return {"backend": {"kind": "scripted", "models": SCRIPTED_MODELS}, **extra}


def _routes() -> list[dict[str, Any]]:
    return [{"model": m["id"], "targets": [{"cluster": "pool"}]} for m in SCRIPTED_MODELS]


@pytest.fixture(scope="module")
def mtls_modelserver(folder: Path, pki: PKI, servers: list[ServerProcess]) -> ServerProcess:
    """A model server that asks every client for a certificate signed by the CA."""
    tls = {
        "cert_file": str(pki.server.cert),
        "key_file": str(pki.server.key),
        "client_ca_file": str(pki.ca),
    }
    server = _start(
        folder,
        "mtls-modelserver",
        MODELSERVER,
        _scripted(tls=tls),
        lambda a: pki.channel(a, client=pki.client),
    )
    servers.append(server)
    return server


def _tls_router(
    folder: Path,
    pki: PKI,
    servers: list[ServerProcess],
    name: str,
    upstream: ServerProcess,
    *,
    client_ca: bool,
) -> ServerProcess:
    listener: dict[str, str] = {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}
    if client_ca:
        listener["client_ca_file"] = str(pki.ca)
    cluster_tls = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client.cert),
        "key_file": str(pki.client.key),
    }
    config = {
        "tls": listener,
        "clusters": {"pool": {"endpoints": [upstream.address], "tls": cluster_tls}},
        "routes": _routes(),
    }
    client = pki.client if client_ca else None
    server = _start(folder, name, ROUTER, config, lambda a: pki.channel(a, client=client))
    servers.append(server)
    return server


@pytest.fixture(scope="module")
def tls_router(
    folder: Path, pki: PKI, servers: list[ServerProcess], mtls_modelserver: ServerProcess
) -> ServerProcess:
    """TLS to clients; mutual TLS to the model server."""
    return _tls_router(folder, pki, servers, "tls-router", mtls_modelserver, client_ca=False)


@pytest.fixture(scope="module")
def mtls_router(
    folder: Path, pki: PKI, servers: list[ServerProcess], mtls_modelserver: ServerProcess
) -> ServerProcess:
    """Mutual TLS to clients and to the model server."""
    return _tls_router(folder, pki, servers, "mtls-router", mtls_modelserver, client_ca=True)


def _generate(channel: grpc.Channel, model: str = "canned", **kwargs: Any) -> pb.GenerateResponse:
    request = pb.GenerateRequest(model=model, prompt=CANARY_PROMPT)
    response: pb.GenerateResponse = pb_grpc.LLMServiceStub(channel).Generate(
        request, timeout=10, **kwargs
    )
    return response


def _refused(channel: grpc.Channel, model: str = "canned", **kwargs: Any) -> grpc.RpcError:
    with channel, pytest.raises(grpc.RpcError) as caught:
        _generate(channel, model, **kwargs)
    return caught.value


# TLS --------------------------------------------------------------------------


def test_the_router_serves_over_tls_and_reaches_model_servers_over_mutual_tls(
    pki: PKI, tls_router: ServerProcess
) -> None:
    with pki.channel(tls_router.address) as channel:
        assert _generate(channel).text == "The capital of France is Paris."


def test_a_plaintext_client_is_refused(tls_router: ServerProcess) -> None:
    error = _refused(grpc.insecure_channel(tls_router.address))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_is_refused(pki: PKI, tls_router: ServerProcess) -> None:
    error = _refused(pki.channel(tls_router.address, ca=pki.other_ca))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(
    pki: PKI, mtls_router: ServerProcess, mtls_modelserver: ServerProcess
) -> None:
    for address in (mtls_router.address, mtls_modelserver.address):
        error = _refused(pki.channel(address))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        with pki.channel(address, client=pki.client) as channel:
            assert _generate(channel).text == "The capital of France is Paris."


def test_mutual_tls_refuses_a_certificate_from_another_ca(
    pki: PKI, mtls_router: ServerProcess
) -> None:
    error = _refused(pki.channel(mtls_router.address, client=pki.other_client))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_health_and_reflection_answer_on_the_tls_port(pki: PKI, tls_router: ServerProcess) -> None:
    with pki.channel(tls_router.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="switchyard.v1.LLMService"), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = {s.name for a in answers for s in a.list_services_response.service}
        assert "switchyard.v1.LLMService" in services


def test_a_rotated_listener_certificate_is_used_for_new_connections(
    folder: Path, pki: PKI, servers: list[ServerProcess]
) -> None:
    first_ca, identity = _own_ca(folder / "rotated", "127.0.0.1")
    tls = {"cert_file": str(identity.cert), "key_file": str(identity.key)}
    server = _start(
        folder,
        "rotating-modelserver",
        MODELSERVER,
        _scripted(tls=tls),
        lambda a: pki.channel(a, ca=first_ca),
    )
    servers.append(server)
    assert _refused(pki.channel(server.address)).code() == grpc.StatusCode.UNAVAILABLE
    # The Secret is updated: a certificate from the CA clients trust.
    _replace(identity.cert, pki.server.cert.read_bytes())
    _replace(identity.key, pki.server.key.read_bytes())
    with pki.channel(server.address) as channel:
        assert _generate(channel).text == "The capital of France is Paris."


def test_a_rotated_cluster_ca_makes_the_router_reconnect(
    folder: Path, pki: PKI, servers: list[ServerProcess]
) -> None:
    upstream = _start(
        folder,
        "plain-tls-modelserver",
        MODELSERVER,
        _scripted(tls={"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}),
        pki.channel,
    )
    servers.append(upstream)
    ca_file = folder / "cluster-ca.pem"
    _replace(ca_file, pki.other_ca.read_bytes())  # wrong: handshakes fail
    config = {
        "clusters": {"pool": {"endpoints": [upstream.address], "tls": {"ca_file": str(ca_file)}}},
        "routes": _routes(),
    }
    router = _start(folder, "rotating-router", ROUTER, config)
    servers.append(router)
    error = _refused(grpc.insecure_channel(router.address))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    _replace(ca_file, pki.ca.read_bytes())  # the Secret now holds the right CA
    deadline = time.monotonic() + 20
    with grpc.insecure_channel(router.address) as channel:
        while True:
            try:
                assert _generate(channel).text == "The capital of France is Paris."
                break
            except grpc.RpcError as failure:
                if time.monotonic() > deadline:
                    raise AssertionError(f"router never reconnected:\n{router.log()}") from failure
                time.sleep(0.2)
    assert "certificates changed" in router.log()


def test_server_name_verifies_a_model_server_whose_certificate_does_not_carry_its_address(
    folder: Path, pki: PKI, servers: list[ServerProcess]
) -> None:
    ca, identity = _own_ca(folder / "named", "llama.switchyard.test")
    tls = {"cert_file": str(identity.cert), "key_file": str(identity.key)}

    def named_channel(address: str) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(ca.read_bytes())
        options = [("grpc.ssl_target_name_override", "llama.switchyard.test")]
        return grpc.secure_channel(address, credentials, options=options)

    upstream = _start(folder, "named-modelserver", MODELSERVER, _scripted(tls=tls), named_channel)
    servers.append(upstream)
    answers = {}
    for server_name in (None, "llama.switchyard.test"):
        cluster_tls = {"ca_file": str(ca)}
        if server_name:
            cluster_tls["server_name"] = server_name
        config = {
            "clusters": {"pool": {"endpoints": [upstream.address], "tls": cluster_tls}},
            "routes": _routes(),
        }
        router = _start(folder, f"named-router-{bool(server_name)}", ROUTER, config)
        servers.append(router)
        try:
            with grpc.insecure_channel(router.address) as channel:
                answers[server_name] = _generate(channel).text
        except grpc.RpcError as error:
            answers[server_name] = error.code().name
    # The certificate is for llama.switchyard.test, not 127.0.0.1.
    assert answers == {
        None: "UNAVAILABLE",
        "llama.switchyard.test": "The capital of France is Paris.",
    }


def test_a_reload_that_changes_the_listener_says_it_takes_a_restart(
    folder: Path, pki: PKI, servers: list[ServerProcess]
) -> None:
    config: dict[str, Any] = {
        "clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}},
        "routes": _routes(),
    }
    router = _start(folder, "relisten-router", ROUTER, config)
    servers.append(router)
    config["tls"] = {"cert_file": str(pki.server.cert), "key_file": str(pki.server.key)}
    config["limits"] = {"max_concurrent_streams": 7}
    write_config(folder / "relisten-router.yaml", config)
    deadline = time.monotonic() + 20
    while "config reloaded" not in router.log():
        assert time.monotonic() < deadline, router.log()
        time.sleep(0.2)
    assert "tls changed: takes effect on restart" in router.log()
    assert "connection limits changed: take effect on restart" in router.log()
    with grpc.insecure_channel(router.address) as channel:  # still plaintext until then
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_certificate_that_does_not_match_its_key_is_refused_at_start(
    pki: PKI, tmp_path: Path
) -> None:
    path = write_config(
        tmp_path / "router.yaml",
        {
            "tls": {"cert_file": str(pki.server.cert), "key_file": str(pki.client.key)},
            "clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}},
            "routes": _routes(),
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    assert "tls" in str(caught.value) and "private key" in str(caught.value)


def test_a_broken_rotation_keeps_the_last_good_certificate(pki: PKI, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _replace(cert, pki.server.cert.read_bytes())
    _replace(key, pki.server.key.read_bytes())
    files = CertificateFiles(cert, key, None)
    _replace(cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert not files.changed()
    assert files.cert == pki.server.cert.read_bytes()
    _replace(cert, pki.client.cert.read_bytes())
    _replace(key, pki.client.key.read_bytes())
    assert files.changed()
    assert files.cert == pki.client.cert.read_bytes()


def test_a_rotation_in_two_steps_keeps_the_old_pair_until_the_new_one_matches(
    pki: PKI, tmp_path: Path
) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _replace(cert, pki.server.cert.read_bytes())
    _replace(key, pki.server.key.read_bytes())
    files = CertificateFiles(cert, key, None)
    _replace(cert, pki.client.cert.read_bytes())  # the new certificate, the old key
    assert not files.changed()
    assert (files.cert, files.key) == (pki.server.cert.read_bytes(), pki.server.key.read_bytes())
    _replace(key, pki.client.key.read_bytes())  # now its key too
    assert files.changed()
    assert (files.cert, files.key) == (pki.client.cert.read_bytes(), pki.client.key.read_bytes())


# API keys -----------------------------------------------------------------------


@dataclass
class Keys:
    full: str
    echo_only: str
    limited: str
    tokens: str
    unknown: str
    per_minute: str
    lister: str


@pytest.fixture(scope="module")
def keys() -> Keys:
    made = Keys(*(f"sk-test-{secrets.token_urlsafe(24)}" for _ in fields(Keys)))
    secretscan.register(*vars(made).values(), CANARY_PROMPT)
    return made


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def auth_router(folder: Path, keys: Keys, servers: list[ServerProcess]) -> ServerProcess:
    upstream = _start(folder, "auth-modelserver", MODELSERVER, _scripted())
    servers.append(upstream)
    hash_file = folder / "full-key.sha256"
    # The output of `printf %s "$KEY" | sha256sum`, as an operator would store it.
    hash_file.write_text(f"{_sha256(keys.full)}  -\n")
    auth = {
        "keys": [
            {"id": "full", "sha256_file": str(hash_file)},
            {"id": "echo-only", "sha256": _sha256(keys.echo_only), "models": ["echo"]},
            {
                "id": "limited",
                "sha256": _sha256(keys.limited),
                "requests_per_minute": 120,
                "request_burst": 2,
            },
            {
                "id": "tokens",
                "sha256": _sha256(keys.tokens).upper(),
                "tokens_per_minute": 600,
                "token_burst": 5,
            },
            {
                "id": "per-minute",
                "sha256": _sha256(keys.per_minute),
                "requests_per_minute": 1,
            },
            {"id": "lister", "sha256": _sha256(keys.lister), "requests_per_minute": 1},
        ]
    }
    config = {
        "clusters": {"pool": {"endpoints": [upstream.address]}},
        "routes": _routes(),
        "auth": auth,
    }
    router = _start(folder, "auth-router", ROUTER, config)
    servers.append(router)
    return router


def _bearer(key: str) -> dict[str, Any]:
    return {"metadata": (("authorization", f"Bearer {key}"),)}


def _auth_refusal(router: ServerProcess, **kwargs: Any) -> grpc.RpcError:
    return _refused(grpc.insecure_channel(router.address), **kwargs)


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="missing"),
        pytest.param((("authorization", "Basic dXNlcjpwYXNz"),), id="not bearer"),
        pytest.param((("authorization", "Bearer "),), id="empty"),
        pytest.param((("authorization", "Bearer sk-not-a-configured-key"),), id="wrong"),
    ],
)
def test_a_missing_malformed_or_wrong_key_is_unauthenticated(
    auth_router: ServerProcess, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = _auth_refusal(auth_router, metadata=metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "sk-not-a-configured-key" not in (error.details() or "")


def test_a_key_that_is_not_configured_is_unauthenticated_for_streams_too(
    auth_router: ServerProcess, keys: Keys
) -> None:
    request = pb.StreamGenerateRequest(model="canned", prompt=CANARY_PROMPT)
    with grpc.insecure_channel(auth_router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamGenerate(request, timeout=10, **_bearer(keys.unknown)))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert keys.unknown not in (caught.value.details() or "")


def test_a_valid_key_is_served(auth_router: ServerProcess, keys: Keys) -> None:
    with grpc.insecure_channel(auth_router.address) as channel:
        assert _generate(channel, **_bearer(keys.full)).text == "The capital of France is Paris."
        stub = pb_grpc.LLMServiceStub(channel)
        request = pb.StreamGenerateRequest(model="echo", prompt=CANARY_PROMPT)
        chunks = list(stub.StreamGenerate(request, timeout=10, **_bearer(keys.echo_only)))
        assert "".join(c.text for c in chunks) == CANARY_PROMPT


def test_a_key_used_for_a_model_it_may_not_use_is_permission_denied(
    auth_router: ServerProcess, keys: Keys
) -> None:
    error = _auth_refusal(auth_router, model="canned", **_bearer(keys.echo_only))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'canned'" in (error.details() or "")
    assert keys.echo_only not in (error.details() or "")
    details = parse_details(error.trailing_metadata())
    assert (details.reason, details.metadata) == ("MODEL_NOT_ALLOWED", {"model": "canned"})


def test_a_limited_key_is_told_only_about_its_own_models(
    auth_router: ServerProcess, keys: Keys
) -> None:
    error = _auth_refusal(auth_router, model="nope", **_bearer(keys.echo_only))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert parse_details(error.trailing_metadata()).metadata["available"] == "echo"
    with grpc.insecure_channel(auth_router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        mine = stub.ListModels(pb.ListModelsRequest(), timeout=10, **_bearer(keys.echo_only))
        everything = stub.ListModels(pb.ListModelsRequest(), timeout=10, **_bearer(keys.full))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.id for m in mine.models] == ["echo"]
    assert {m.id for m in everything.models} == {m["id"] for m in SCRIPTED_MODELS}
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open_and_the_admin_service_needs_a_key(
    auth_router: ServerProcess, keys: Keys
) -> None:
    with grpc.insecure_channel(auth_router.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        assert any(a.list_services_response.service for a in answers)
        admin = admin_grpc.RouterAdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            admin.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = admin.ListEndpoints(
            admin_pb.ListEndpointsRequest(), timeout=5, **_bearer(keys.full)
        )
        assert len(listed.endpoints) == 1


def test_a_key_limited_to_some_models_may_not_see_every_endpoint(
    auth_router: ServerProcess, keys: Keys
) -> None:
    # The admin view names every cluster's endpoints and models.
    with (
        grpc.insecure_channel(auth_router.address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        admin_grpc.RouterAdminServiceStub(channel).ListEndpoints(
            admin_pb.ListEndpointsRequest(), timeout=5, **_bearer(keys.echo_only)
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert parse_details(caught.value.trailing_metadata()).reason == "ADMIN_NOT_ALLOWED"


def test_health_can_require_a_key_too(
    folder: Path, keys: Keys, servers: list[ServerProcess]
) -> None:
    config = {
        "clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}},
        "routes": _routes(),
        "auth": {
            "keys": [{"id": "full", "sha256": _sha256(keys.full)}],
            "open_services": ["grpc.reflection.v1alpha.ServerReflection"],
        },
    }
    bearer = (("authorization", f"Bearer {keys.full}"),)
    router = _start(folder, "closed-health-router", ROUTER, config, metadata=bearer)
    servers.append(router)
    with grpc.insecure_channel(router.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        assert any(a.list_services_response.service for a in answers)  # still open


def test_a_rotated_key_file_replaces_the_key(
    folder: Path, keys: Keys, servers: list[ServerProcess]
) -> None:
    hash_file = folder / "rotating-key.sha256"
    _replace(hash_file, _sha256(keys.full).encode())
    config = {
        "clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}},
        "routes": _routes(),
        "auth": {"keys": [{"id": "rotating", "sha256_file": str(hash_file)}]},
    }
    router = _start(folder, "rotating-key-router", ROUTER, config)
    servers.append(router)

    def list_models(key: str) -> grpc.StatusCode:
        with grpc.insecure_channel(router.address) as channel:
            try:
                pb_grpc.LLMServiceStub(channel).ListModels(
                    pb.ListModelsRequest(), timeout=5, **_bearer(key)
                )
            except grpc.RpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    assert list_models(keys.full) == grpc.StatusCode.OK
    _replace(hash_file, _sha256(keys.echo_only).encode())  # the Secret is updated
    deadline = time.monotonic() + 20
    while list_models(keys.echo_only) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, router.log()
        time.sleep(0.2)
    assert list_models(keys.full) == grpc.StatusCode.UNAUTHENTICATED


class MetadataRecorder:
    """A gRPC server on 127.0.0.1 that answers Generate and records the metadata each
    call arrived with, as a model server would receive it. (No model server shows the
    metadata it received: this upstream stands in for one to see the wire.)"""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health = health_servicer.HealthServicer()
        for name in ("", "canned"):
            health.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, self.server)
        handler = grpc.unary_unary_rpc_method_handler(
            self._generate,
            request_deserializer=pb.GenerateRequest.FromString,
            response_serializer=pb.GenerateResponse.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "switchyard.v1.LLMService", {"Generate": handler}
                )
            ]
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        self.received.append(dict(context.invocation_metadata()))
        return pb.GenerateResponse(text="recorded", model=request.model)


def test_the_callers_api_key_is_not_forwarded_to_model_servers(
    folder: Path, keys: Keys, servers: list[ServerProcess]
) -> None:
    upstream = MetadataRecorder()
    try:
        fronts = {}
        for auth in (False, True):
            config: dict[str, Any] = {
                "clusters": {"pool": {"endpoints": [upstream.address]}},
                "routes": [{"model": "canned", "targets": [{"cluster": "pool"}]}],
            }
            if auth:
                config["auth"] = {"keys": [{"id": "front", "sha256": _sha256(keys.full)}]}
            fronts[auth] = _start(folder, f"forwarding-router-auth-{auth}", ROUTER, config)
            servers.append(fronts[auth])
        marker = ("x-request-marker", "kept")
        for auth in (False, True):
            with grpc.insecure_channel(fronts[auth].address) as channel:
                metadata = (("authorization", f"Bearer {keys.full}"), marker)
                assert _generate(channel, metadata=metadata).text == "recorded"
    finally:
        upstream.server.stop(None)
    without_auth, with_auth = upstream.received
    # Without auth the router relays metadata as it is, the caller's credentials
    # included (the control); with auth on it keeps the key to itself.
    assert without_auth["authorization"] == f"Bearer {keys.full}"
    assert "authorization" not in with_auth
    assert keys.full not in repr(with_auth)
    assert with_auth["x-request-marker"] == "kept"  # other metadata still goes through


@pytest.mark.parametrize("module", [ROUTER, MODELSERVER])
def test_a_message_over_max_message_bytes_is_resource_exhausted(
    module: str, folder: Path, servers: list[ServerProcess]
) -> None:
    model_server = _start(
        folder, f"small-messages-{module}", MODELSERVER, _scripted(max_message_bytes=4096)
    )
    servers.append(model_server)
    target = model_server
    if module == ROUTER:
        config = {
            "clusters": {"pool": {"endpoints": [model_server.address]}},
            "routes": _routes(),
            "max_message_bytes": 4096,
        }
        target = _start(folder, "small-messages-router", ROUTER, config)
        servers.append(target)
    with grpc.insecure_channel(target.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        fits = pb.GenerateRequest(model="echo", prompt="x" * 3000)
        assert stub.Generate(fits, timeout=10).text == "x" * 3000
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(pb.GenerateRequest(model="echo", prompt="x" * 5000), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5" in (caught.value.details() or "")  # gRPC names the size it got


# Rate limits ----------------------------------------------------------------------


def _rate_limited(channel: grpc.Channel, key: str) -> float:
    """Sends until the key is refused; returns the RetryInfo delay."""
    for _ in range(10):
        try:
            _generate(channel, **_bearer(key))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            details = parse_details(error.trailing_metadata())
            assert details.reason == "RATE_LIMITED"
            assert details.retry_after is not None and details.retry_after > 0
            assert key not in (error.details() or "")
            return details.retry_after
    raise AssertionError("never rate limited")


def _refusals_logged(router: ServerProcess, key_id: str, keys: Keys) -> list[str]:
    """The router's access-log lines of rate-limited requests of a key. A line is
    written just after its answer: a marker request of another key, sent after every
    answer of this one arrived, is logged after all of them; wait for its line."""

    def lines(key: str, code: str) -> list[str]:
        return [
            line
            for line in router.log().splitlines()
            if f"code={code}" in line and f"key_id={key} " in f"{line} "
        ]

    markers = len(lines("full", "OK"))
    with grpc.insecure_channel(router.address) as channel:
        _generate(channel, **_bearer(keys.full))
    wait_until(lambda: len(lines("full", "OK")) > markers, "the marker request's access line")
    found = lines(key_id, "RESOURCE_EXHAUSTED")
    assert found, f"no rate-limited request of {key_id} logged:\n{router.log()}"
    return found


def test_a_burst_over_the_request_rate_waits_for_the_stated_time(
    auth_router: ServerProcess, keys: Keys
) -> None:
    with grpc.insecure_channel(auth_router.address) as channel:
        retry_after = _rate_limited(channel, keys.limited)
        assert retry_after <= 0.5  # 120 per minute: one more every half second
        time.sleep(retry_after)
        assert _generate(channel, **_bearer(keys.limited)).text  # served again
    # Refused at the router before any model server was tried (never retried elsewhere).
    refused = _refusals_logged(auth_router, "limited", keys)
    assert all("attempts=0 " in line and "model=canned " in line for line in refused)


def test_tokens_are_counted_from_usage_and_limited(auth_router: ServerProcess, keys: Keys) -> None:
    with grpc.insecure_channel(auth_router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        # A stream's last message carries its usage: it overdraws the 5-token burst.
        request = pb.StreamGenerateRequest(model="canned", prompt="count me")
        started = time.monotonic()  # before the charge
        list(stub.StreamGenerate(request, timeout=10, **_bearer(keys.tokens)))
        error = _refused(grpc.insecure_channel(auth_router.address), **_bearer(keys.tokens))
        elapsed = time.monotonic() - started  # at least the refill since the charge
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = parse_details(error.trailing_metadata())
        assert details.metadata == {"limit": "tokens_per_minute"}
        assert details.retry_after is not None
        # 2 prompt + 6 completion tokens from a full bucket of 5: at -3, a whole token
        # is 4 away, 0.4 s at 10 a second, less what refilled before the refusal
        # (bounded by the time measured here, however busy the machine).
        assert max(0.0, 0.4 - elapsed) - 0.001 <= details.retry_after <= 0.401
        time.sleep(details.retry_after)
        assert _generate(channel, **_bearer(keys.tokens)).text


def test_over_both_limits_the_stated_wait_is_the_longer_one() -> None:
    key = APIKeyConfig(
        id="both",
        sha256=_sha256("both"),
        requests_per_minute=6,  # one every 10 s
        request_burst=1,
        tokens_per_minute=600,  # ten a second
        token_burst=5,
    )
    limits = KeyLimits.of(
        key.id,
        key.requests_per_minute,
        key.request_burst,
        key.tokens_per_minute,
        key.token_burst,
        key.token_budget,
    )
    assert limits is not None
    limiter = KeyLimiter(limits)
    limiter.admit()
    limiter.charge(8)  # 3 tokens overdrawn: 0.4 s to refill; the next request: 10 s
    with pytest.raises(StatusError) as caught:
        limiter.admit()
    details = caught.value.details
    assert details.metadata == {"limit": "requests_per_minute"}
    assert details.retry_after is not None and 9 < details.retry_after <= 10


def test_the_sdk_raises_a_long_rate_limit_at_once_instead_of_retrying_early(
    auth_router: ServerProcess, keys: Keys
) -> None:
    with Client(auth_router.address, api_key=keys.per_minute, max_retries=2) as client:
        assert client.generate("canned", "hi").text
        with pytest.raises(RateLimitError) as caught:
            client.generate("canned", "hi")
    assert caught.value.retry_after is not None and caught.value.retry_after > 30
    # One refusal: no retry came before the stated wait, to be refused again.
    assert len(_refusals_logged(auth_router, "per-minute", keys)) == 1


def test_list_models_counts_toward_the_request_rate(auth_router: ServerProcess, keys: Keys) -> None:
    # ListModels asks every endpoint: a key may not spin on it past its rate.
    with grpc.insecure_channel(auth_router.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        stub.ListModels(pb.ListModelsRequest(), timeout=10, **_bearer(keys.lister))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(pb.ListModelsRequest(), timeout=10, **_bearer(keys.lister))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert parse_details(caught.value.trailing_metadata()).retry_after is not None


# Input and connection limits ---------------------------------------------------------


@pytest.fixture(scope="module")
def limited(folder: Path, servers: list[ServerProcess]) -> ServerProcess:
    limits = {
        "max_prompt_chars": 100,
        "max_messages": 4,
        "max_stop_sequences": 2,
        "max_stop_sequence_chars": 10,
        "max_tokens": 16,
        "max_tokens_per_model": {"echo": 4},
    }
    upstream = _start(folder, "limited-modelserver", MODELSERVER, _scripted(limits=limits))
    servers.append(upstream)
    config = {
        "clusters": {"pool": {"endpoints": [upstream.address]}},
        "routes": _routes(),
        "limits": {"max_request_bytes": 2048, "max_concurrent_streams": 1},
    }
    router = _start(folder, "limited-router", ROUTER, config)
    servers.append(router)
    return router


def _message(role: str = "user") -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content="hi")


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        pytest.param({"prompt": "x" * 3000}, "request", id="request bytes (router)"),
        pytest.param({"prompt": "x" * 101}, "prompt", id="prompt characters"),
        pytest.param({"messages": [_message()] * 5}, "messages", id="number of messages"),
        pytest.param(
            {"prompt": "p", "continuation": pb.Continuation(text="x" * 101)},
            "continuation.text",
            id="continuation characters",
        ),
        pytest.param(
            {"prompt": "p", "sampling": pb.SamplingParams(stop=["a", "b", "c"])},
            "sampling.stop",
            id="stop sequences",
        ),
        pytest.param(
            {"prompt": "p", "sampling": pb.SamplingParams(stop=["short", "x" * 11])},
            "sampling.stop[1]",
            id="stop sequence characters",
        ),
        pytest.param(
            {"prompt": "p", "sampling": pb.SamplingParams(max_tokens=17)},
            "sampling.max_tokens",
            id="max_tokens ceiling",
        ),
    ],
)
def test_input_over_a_limit_is_invalid_argument_naming_the_field(
    limited: ServerProcess, request_fields: dict[str, Any], field: str
) -> None:
    request = pb.GenerateRequest(model="canned", **request_fields)
    with grpc.insecure_channel(limited.address) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.LLMServiceStub(channel).Generate(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = parse_details(caught.value.trailing_metadata()).field_violations
    assert [v.field for v in violations] == [field]
    assert field in (caught.value.details() or "")


def test_a_models_own_max_tokens_ceiling_caps_an_unset_max_tokens(limited: ServerProcess) -> None:
    with grpc.insecure_channel(limited.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        prompt = "one two three four five six seven"
        answer = stub.Generate(pb.GenerateRequest(model="echo", prompt=prompt), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(
                pb.GenerateRequest(
                    model="echo", prompt=prompt, sampling=pb.SamplingParams(max_tokens=5)
                ),
                timeout=10,
            )
    assert answer.usage.completion_tokens == 4
    assert answer.finish_reason == pb.FINISH_REASON_LENGTH
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4 for model 'echo'" in (caught.value.details() or "")


def test_one_connection_gets_at_most_max_concurrent_streams(limited: ServerProcess) -> None:
    with (
        grpc.insecure_channel(limited.address, options=_OWN_CONNECTION) as channel,
        grpc.insecure_channel(limited.address, options=_OWN_CONNECTION) as other,
    ):
        stub = pb_grpc.LLMServiceStub(channel)
        # 8 tokens, 200 ms apart: open for over a second.
        slow = stub.StreamGenerate(pb.StreamGenerateRequest(model="drip", prompt="p"), timeout=30)
        assert next(iter(slow)).text  # the stream is open
        with pytest.raises(grpc.RpcError) as caught:
            stub.Generate(pb.GenerateRequest(model="canned", prompt="p"), timeout=0.4)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # waited its turn
        assert _generate(other).text  # another connection is served meanwhile
        slow.cancel()  # type: ignore[no-untyped-call]


_PINGER = """
import sys, grpc
from grpc_health.v1 import health as health_servicer
from grpc_health.v1 import health_pb2, health_pb2_grpc
options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_permit_without_calls", 1),
           ("grpc.http2.max_pings_without_data", 0), ("grpc.http2.min_time_between_pings_ms", 1000)]
with grpc.insecure_channel(sys.argv[1], options=options) as channel:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
    try:
        for _ in watch:
            pass
    except grpc.RpcError as error:
        print(error.code().name, error.details())
"""


@pytest.mark.parametrize("kind", ["modelserver", "router"])
def test_a_client_that_pings_too_often_is_disconnected(
    folder: Path, servers: list[ServerProcess], kind: str
) -> None:
    # Pings every second (gRPC clients' floor), 2 strikes allowed: against a model
    # server that allows one per 5 s, and against the router at its defaults (10 s).
    if kind == "modelserver":
        limits = {"min_ping_interval_seconds": 5, "max_ping_strikes": 2}
        server = _start(folder, "ping-modelserver", MODELSERVER, _scripted(limits=limits))
    else:
        config = {"clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}}, "routes": _routes()}
        server = _start(folder, "ping-router", ROUTER, config)
    servers.append(server)
    result = subprocess.run(
        [sys.executable, "-c", _PINGER, server.address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.startswith("UNAVAILABLE Too many pings"), result.stdout + result.stderr


# Spans -----------------------------------------------------------------------------


def test_no_key_or_prompt_reaches_a_span(
    folder: Path,
    keys: Keys,
    receiver: tuple[Receiver, str],  # a real OTLP receiver (otlp.py)
    servers: list[ServerProcess],
) -> None:
    collector, endpoint = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    upstream = _start(folder, "traced-modelserver", MODELSERVER, _scripted(), env=env)
    servers.append(upstream)
    auth = {
        "keys": [
            {"id": "full", "sha256": _sha256(keys.full)},
            {"id": "echo-only", "sha256": _sha256(keys.echo_only), "models": ["echo"]},
        ]
    }
    config = {
        "clusters": {"pool": {"endpoints": [upstream.address]}},
        "routes": _routes(),
        "auth": auth,
    }
    router = _start(folder, "traced-router", ROUTER, config, env=env)
    servers.append(router)
    with grpc.insecure_channel(router.address) as channel:
        assert _generate(channel, model="echo", **_bearer(keys.full)).text == CANARY_PROMPT
        for key in (keys.echo_only, keys.unknown):  # refused: PERMISSION_DENIED, UNAUTHENTICATED
            with pytest.raises(grpc.RpcError):
                _generate(channel, **_bearer(key))
    spans = collector.wait_for(3)  # router request, its attempt, the model server's
    text = json.dumps(spans)
    assert "gen_ai.request.model" in text
    for secret in (keys.full, keys.echo_only, keys.unknown, CANARY_PROMPT):
        assert secret not in text


# Logs ------------------------------------------------------------------------------


def test_no_key_or_prompt_reaches_the_logs_of_this_modules_servers(
    folder: Path, keys: Keys, auth_router: ServerProcess, tls_router: ServerProcess
) -> None:
    # Every key above was sent (and wrong ones refused) at DEBUG log level.
    assert "key_id=full" in auth_router.log()  # the access log names keys by id
    assert secretscan.leaks({folder}) == []


# The SDK ------------------------------------------------------------------------------


def test_the_sdk_sends_its_api_key_and_speaks_tls(
    pki: PKI,
    auth_router: ServerProcess,
    tls_router: ServerProcess,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with Client(auth_router.address, api_key=keys.echo_only, max_retries=0) as client:
        assert [m.id for m in client.list_models()] == ["echo"]
        assert client.generate("echo", "hello there").text == "hello there"
        with pytest.raises(PermissionDeniedError):
            client.generate("canned", "hello")
    with Client(auth_router.address, max_retries=0) as client, pytest.raises(AuthenticationError):
        client.generate("echo", "hello")
    monkeypatch.setenv(API_KEY_ENV, keys.full)
    with Client(auth_router.address, max_retries=0) as client:
        assert client.generate("canned", "hello").text == "The capital of France is Paris."
    credentials = grpc.ssl_channel_credentials(pki.ca.read_bytes())
    with Client(tls_router.address, credentials=credentials) as client:
        assert client.generate("canned", "hello").text == "The capital of France is Paris."


def test_the_log_scan_finds_a_key_in_a_log(tmp_path: Path) -> None:
    key = f"sk-test-{secrets.token_hex(8)}"
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "server.log").write_text(f"INFO something authorization={key[::-1]}\n")
    assert secretscan.leaks({tmp_path}, {key}) == []
    (tmp_path / "nested" / "server.log").write_text(f"INFO something authorization={key}\n")
    assert len(secretscan.leaks({tmp_path}, {key})) == 1


# The documented examples -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model"),
    [("router-secure.yaml", RouterConfig), ("modelserver-secure.yaml", ModelServerConfig)],
)
def test_the_security_examples_are_in_the_readme_and_valid(
    pki: PKI, folder: Path, monkeypatch: pytest.MonkeyPatch, name: str, model: type[Any]
) -> None:
    example = REPO / "deploy/examples" / name
    assert example.read_text().split("\n", 1)[1] in (REPO / "README.md").read_text()
    secret = folder / "example-secret"  # what the Secrets would mount
    secret.mkdir(exist_ok=True)
    for target, source in [
        ("tls.crt", pki.server.cert),
        ("tls.key", pki.server.key),
        ("ca.crt", pki.ca),
        ("client.crt", pki.client.cert),
        ("client.key", pki.client.key),
    ]:
        (secret / target).write_bytes(source.read_bytes())
    (secret / "web-app.sha256").write_text(_sha256("example") + "\n")
    monkeypatch.setenv("TLS_DIR", str(secret))
    monkeypatch.setenv("KEYS_DIR", str(secret))
    config = load_config(example, model)
    assert config.tls is not None and config.tls.client_ca_file is not None
    if isinstance(config, ModelServerConfig):
        backend_class(config.backend.kind).options_model.model_validate(config.backend.options())
    else:
        assert config.auth is not None and config.auth.keys[0].digest == bytes.fromhex(
            _sha256("example")
        )
