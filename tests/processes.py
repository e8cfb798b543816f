"""Real server processes for the tests, started as an operator would start them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

STARTUP_TIMEOUT = 60.0


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_ci() -> bool:
    """CI (``CI=true``, as root): the set-up installed every tool, so nothing may skip."""
    return os.environ.get("CI") == "true" and os.geteuid() == 0


def unavailable(reason: str) -> NoReturn:
    """A test whose real part (a daemon, a tool) cannot run here: a skip with the reason
    on a developer's machine, a failure on CI, where a skip would pass without checking."""
    if on_ci():
        pytest.fail(f"cannot run on CI: {reason}", pytrace=False)
    pytest.skip(f"cannot run here: {reason}")


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = 15.0, poll: float = 0.02
) -> None:
    """Polls ``condition`` until it is true; fails naming ``what`` was awaited. The way a
    test waits for something it can observe (a request seen, a state, a log line)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(poll)


def health_status(
    address: str,
    service: str = "",
    timeout: float = 2.0,
    *,
    channel: grpc.Channel | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
) -> str:
    """The health status name of ``service`` at ``address`` (or UNREACHABLE), over
    ``channel`` when given (TLS, say) or a new plaintext one."""
    if channel is None:
        with grpc.insecure_channel(address) as plain:
            return health_status(address, service, timeout, channel=plain, metadata=metadata)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        response = stub.Check(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as error:
        return "UNREACHABLE" if error.code() == grpc.StatusCode.UNAVAILABLE else error.code().name
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return name


class ServerProcess:
    """A model server or router subprocess with its log in a file."""

    def __init__(
        self,
        name: str,
        module: str,
        config: Path,
        port: int,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        python: str | None = None,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
        wrapper: list[str] | None = None,
        metrics_address: str | None = None,
    ) -> None:
        """``wrapper``: a command the server runs under (``unshare ...``);
        ``metrics_address``: where its config serves /metrics, if anywhere."""
        self.name = name
        self.address = f"{host}:{port}"
        self.metrics_address = metrics_address
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *(wrapper or []),
                python or sys.executable,
                "-m",
                module,
                "--config",
                str(config),
                "--listen",
                self.address,
                *(extra_args or []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        )

    def wait_serving(
        self,
        service: str = "",
        timeout: float = STARTUP_TIMEOUT,
        *,
        channel: grpc.Channel | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Waits until health reports SERVING (asked over ``channel`` when given, with
        ``metadata``); fails with the log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{self.log()}")
            status = health_status(
                self.address, service, timeout=1.0, channel=channel, metadata=metadata
            )
            if status == "SERVING":
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not SERVING after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
