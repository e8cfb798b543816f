"""Start and stop groups of model servers and a router for one test."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from conftest import start_modelserver, start_router, write_config
from processes import ServerProcess
from prometheus_client.parser import text_string_to_metric_families

from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc


class Fleet:
    """Model servers and routers a test started; all stopped at the end."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.servers: list[ServerProcess] = []

    def scripted(self, label: str, models: list[dict[str, Any]], **extra: Any) -> ServerProcess:
        """A scripted model server."""
        config = {"backend": {"kind": "scripted", "models": models}, **extra}
        server = start_modelserver(self.workdir, f"{self.name}-{label}", config)
        self.servers.append(server)
        return server

    def modelserver(self, label: str, config: dict[str, Any]) -> ServerProcess:
        server = start_modelserver(self.workdir, f"{self.name}-{label}", config)
        self.servers.append(server)
        return server

    def router(self, config: dict[str, Any], label: str = "router") -> ServerProcess:
        config = {"retry": {"num_retries": 2}, **config}
        server = start_router(self.workdir, f"{self.name}-{label}", config)
        self.servers.append(server)
        return server

    def rewrite_router_config(self, label: str, config: dict[str, Any]) -> Path:
        return write_config(self.workdir / f"{self.name}-{label}.yaml", config)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def endpoints(router: ServerProcess) -> list[admin_pb.EndpointStatus]:
    """The router's view of its endpoints (RouterAdminService)."""
    with grpc.insecure_channel(router.address) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        return list(stub.ListEndpoints(admin_pb.ListEndpointsRequest(), timeout=5).endpoints)


def wait_for_state(router: ServerProcess, address: str, state: int, timeout: float = 15) -> None:
    """Waits until the router reports ``address`` in ``state`` (an EndpointState)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = {e.address: e.state for e in endpoints(router)}.get(address)
        if seen == state:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{address} is {admin_pb.EndpointState.Name(seen or 0)}, "
        f"not {admin_pb.EndpointState.Name(state)}"
    )


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample at http://127.0.0.1:PORT/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
