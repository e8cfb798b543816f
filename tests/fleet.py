"""Start and stop groups of model servers and a router for one test."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from conftest import start_modelserver, start_router, write_config
from processes import ServerProcess, free_port, wait_until
from scrape import scrape, value

from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc


class Fleet:
    """Model servers and routers a test started; all stopped at the end."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.servers: list[ServerProcess] = []

    def scripted(
        self, label: str, models: list[dict[str, Any]], metrics: bool = False, **extra: Any
    ) -> ServerProcess:
        """A scripted model server (``metrics``: with /metrics on a free port)."""
        config = {"backend": {"kind": "scripted", "models": models}, **extra}
        if metrics:
            config["metrics_listen"] = f"127.0.0.1:{free_port()}"
        server = start_modelserver(self.workdir, f"{self.name}-{label}", config)
        self.servers.append(server)
        return server

    def modelserver(self, label: str, config: dict[str, Any], **options: Any) -> ServerProcess:
        server = start_modelserver(self.workdir, f"{self.name}-{label}", config, **options)
        self.servers.append(server)
        return server

    def router(
        self, config: dict[str, Any], label: str = "router", metrics: bool = False, **options: Any
    ) -> ServerProcess:
        """A router (``metrics``: with /metrics on a free port)."""
        config = {"retry": {"num_retries": 2}, **config}
        if metrics:
            config["metrics_listen"] = f"127.0.0.1:{free_port()}"
        server = start_router(self.workdir, f"{self.name}-{label}", config, **options)
        self.servers.append(server)
        return server

    def rewrite_router_config(self, label: str, config: dict[str, Any]) -> Path:
        return write_config(self.workdir / f"{self.name}-{label}.yaml", config)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def endpoints(
    router: ServerProcess, metadata: tuple[tuple[str, str], ...] = ()
) -> list[admin_pb.EndpointStatus]:
    """The router's view of its endpoints (RouterAdminService; ``metadata``: a key's,
    with auth on)."""
    with grpc.insecure_channel(router.address) as channel:
        stub = admin_grpc.RouterAdminServiceStub(channel)
        request = admin_pb.ListEndpointsRequest()
        return list(stub.ListEndpoints(request, timeout=5, metadata=metadata).endpoints)


def wait_healthy(
    router: ServerProcess, metadata: tuple[tuple[str, str], ...] = ()
) -> ServerProcess:
    """Waits until the router sees every endpoint of its clusters healthy; returns it
    (``metadata``: a key without a ``models`` limit, with auth on). A router starts
    serving after a short wait for its endpoints' first health reports: on a busy
    machine a first request can still come before them (503, no healthy endpoint),
    which a test that expects an answer must not mistake for its subject."""
    wait_until(
        lambda: all(
            e.state == admin_pb.ENDPOINT_STATE_HEALTHY for e in endpoints(router, metadata)
        ),
        f"every endpoint of {router.name} healthy",
    )
    return router


def endpoint_view(router: ServerProcess, address: str) -> admin_pb.EndpointStatus:
    """The router's view of one endpoint."""
    [view] = [e for e in endpoints(router) if e.address == address]
    return view


def in_flight(server: ServerProcess, model: str) -> float:
    """Requests a model server is generating for ``model`` now (its own gauge)."""
    assert server.metrics_address, f"{server.name} serves no metrics"
    samples = scrape(server.metrics_address)
    return value(samples, "switchyard_modelserver_in_flight_requests", model=model)


def wait_in_flight(server: ServerProcess, model: str, at_least: int = 1) -> None:
    """Waits until the model server itself has ``at_least`` requests for ``model`` running."""
    wait_until(
        lambda: in_flight(server, model) >= at_least,
        f"{at_least} requests for {model} in flight on {server.name}",
    )


def access_lines(server: ServerProcess) -> list[dict[str, str]]:
    """A server's access-log lines (``request method=...``), parsed into their fields."""
    lines = [line for line in server.log().splitlines() if " request method=" in line]
    return [dict(re.findall(r"(\w+)=(\S+)", line.split(" request ", 1)[1])) for line in lines]


def wait_access_lines(server: ServerProcess, count: int) -> list[dict[str, str]]:
    """Waits for ``count`` access-log lines (written just after each answer); returns them."""
    wait_until(lambda: len(access_lines(server)) >= count, f"{count} access lines of {server.name}")
    return access_lines(server)


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


def shown_endpoints(router: ServerProcess) -> str:
    """What ``switchyard endpoints`` (the SDK's CLI, in its own process) prints for a router."""
    return subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "--target", router.address, "endpoints"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def reported_requests(metrics_port: int, address: str, state: str, cluster: str = "pool") -> float:
    """The requests ``address`` last reported ``state`` (running, waiting) to the router
    whose /metrics is on ``metrics_port`` (its ORCA load report, as the router keeps it)."""
    return value(
        scrape(metrics_port),
        "switchyard_router_endpoint_reported_requests",
        cluster=cluster,
        endpoint=address,
        state=state,
    )
