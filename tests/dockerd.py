"""A private Docker daemon for the container tests, and what its image builds need.

Docker Hub is unreachable here, so the base image is a Debian root filesystem
made by debootstrap (scripts/setup.d/40-containers.sh caches the tarball) and
imported into this daemon; the Python wheels the images install were fetched
by the same set-up (scripts/image_wheels.py), so builds reach no index.

A container test that cannot run (no dockerd, no root, a daemon that does not
answer, a missing base image or wheel) skips with the reason on a developer's
machine and fails with it on CI (``CI=true`` as root), where everything it
needs is installed: there a skip would be a check that passed without checking.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "switchyard"
BASE_TARBALL = CACHE / "images" / "debian-py-bookworm.tar"
BASE_IMAGE = "local/debian-py:bookworm"


class EngineUnavailableError(Exception):
    """No container engine can start on this machine (``processes.unavailable``)."""


class PrivateDockerd:
    """dockerd on its own socket and data root (no bridge, no iptables: host network only)."""

    def __init__(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise EngineUnavailableError("dockerd is not installed (Debian docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailableError("dockerd needs root here (no rootless set-up)")
        # Short path: a unix socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="sy-dockerd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self._log = (self.root / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                dockerd,
                "--host",
                self.host,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 15) -> str:
        text = (self.root / "dockerd.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Waits until the daemon answers ``GET /_ping`` on its socket.

        Only "not listening yet" is waited out (no socket, connection refused); any
        other answer is an error of its own and propagates."""
        deadline = time.monotonic() + timeout
        last = "no socket yet"
        while True:
            if self.process.poll() is not None:
                raise EngineUnavailableError(f"dockerd exited: {self.log_tail()}")
            try:
                status, body = _ping(self.socket)
            except (FileNotFoundError, ConnectionRefusedError) as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if status == 200:
                    return
                raise RuntimeError(f"dockerd answered its ping with {status}: {body}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailableError(
                    f"dockerd did not answer in {timeout:.0f} s ({last}):\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        # dockerd leaves its network namespace (and, after a crash, layers) mounted.
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        inside = sorted(
            (m.split()[1] for m in mounts if m.split()[1].startswith(f"{self.root}/")), reverse=True
        )
        for point in inside:
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _ping(path: Path) -> tuple[int, str]:
    """``GET /_ping`` on the daemon's unix socket: (HTTP status, body)."""
    connection = http.client.HTTPConnection("localhost", timeout=10)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        unix.settimeout(10)
        unix.connect(str(path))
        connection.sock = unix
        connection.request("GET", "/_ping")
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()
        unix.close()


def image_wheels() -> Path:
    """Every wheel the images install, from what the set-up fetched (no index).

    Raises ``EngineUnavailableError`` naming what the set-up did not fetch."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image_wheels.py"), "gather"],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise EngineUnavailableError(result.stderr.strip())
    return Path(result.stdout.strip())


def build_context(destination: Path, wheels: Path) -> Path:
    """The repository's files the Dockerfiles copy, plus the wheels, in a fresh folder."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.whl")
    for folder in ("clients/python", "services", "deploy/docker"):
        shutil.copytree(ROOT / folder, destination / folder, ignore=skip)
    (destination / "requirements").mkdir()
    shutil.copy(ROOT / "requirements" / "constraints.txt", destination / "requirements")
    shutil.copy(ROOT / ".dockerignore", destination)
    for wheel in wheels.glob("*.whl"):
        shutil.copy(wheel, destination / "deploy" / "docker" / "wheels")
    return destination
