"""A real Redis for the tests: Debian's redis-server (scripts/setup.d/30-redis.sh) on a
free port of 127.0.0.1, nothing written to disk, memory bounded."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from processes import free_port, unavailable

_START_TIMEOUT = 10.0


class RedisServer:
    """One redis-server process; ``kill`` and ``start`` again keep its port."""

    def __init__(
        self,
        workdir: Path,
        name: str = "redis",
        *,
        tls: Path | None = None,
        password: str | None = None,
    ) -> None:
        """``tls``: a folder with tls.crt, tls.key and ca.crt (TLS only, no plaintext
        port); ``password``: what clients must send (``requirepass``)."""
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (Debian redis-server; scripts/setup.d/)")
        self.binary = binary
        self.workdir = workdir
        self.name = name
        self.tls = tls
        self.password = password
        self.port = free_port()
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Starts it (empty: nothing was saved) and waits until it answers."""
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls / "tls.crt"),
                "--tls-key-file", str(self.tls / "tls.key"),
                "--tls-ca-cert-file", str(self.tls / "ca.crt"),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.password is not None:
            listen += ["--requirepass", self.password]
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                *listen,
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--maxmemory", "64mb",
                "--dir", str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.process.returncode}")
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise TimeoutError(f"redis-server not answering after {_START_TIMEOUT}s")

    def client(self) -> redis.Redis:
        """A client of its own (close it, or use it in ``with``)."""
        if self.tls is None:
            return redis.Redis(
                host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
            )
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=5,
            ssl=True,
            ssl_ca_certs=str(self.tls / "ca.crt"),
        )

    def kill(self) -> None:
        """kill -9: no goodbye to its clients, and everything in it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.kill()
