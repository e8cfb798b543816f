"""A private Docker daemon for the container tests, and what its image builds need.

Docker Hub is unreachable here, so the base image is a Debian root filesystem
made by debootstrap (scripts/setup.d/40-containers.sh caches the tarball) and
imported into this daemon; the Python wheels the images install are gathered on
the host once per set of pins, so builds need no index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "switchyard"
BASE_TARBALL = CACHE / "images" / "debian-py-bookworm.tar"
BASE_IMAGE = "local/debian-py:bookworm"
LLAMA_WHEELHOUSE = Path(os.environ.get("SWITCHYARD_WHEELHOUSE", CACHE / "wheelhouse"))


class EngineUnavailableError(Exception):
    """No container engine can start on this machine (the tests skip with this reason)."""


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

    def wait_ready(self, ping: object, timeout: float = 60.0) -> None:
        """Polls ``ping()`` (a callable) until the daemon answers."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise EngineUnavailableError(f"dockerd exited: {self.log_tail()}")
            try:
                if callable(ping) and ping():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailableError(f"dockerd did not answer in {timeout:.0f} s")
            time.sleep(0.5)

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


def image_wheels() -> Path:
    """Every wheel the images install (llama.cpp's portable build included), cached.

    Keyed by the pins and the packages' declared dependencies; the Switchyard
    packages themselves are built from source inside the images.
    """
    inputs = [
        ROOT / "requirements" / "constraints.txt",
        ROOT / "clients" / "python" / "pyproject.toml",
        ROOT / "services" / "common" / "pyproject.toml",
        ROOT / "services" / "router" / "pyproject.toml",
        ROOT / "services" / "modelserver" / "pyproject.toml",
    ]
    requirements = [
        "setuptools>=68",
        str(ROOT / "clients" / "python"),
        str(ROOT / "services" / "common"),
        str(ROOT / "services" / "router"),
        # The cloud image's extras too (absent extras are only a warning).
        f"{ROOT / 'services' / 'modelserver'}[llamacpp,openai,anthropic,ollama]",
    ]
    digest = hashlib.sha256("\n".join(requirements).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    key = digest.hexdigest()[:16]
    target = CACHE / "image-wheels" / key
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(partial),
                "--find-links",
                str(LLAMA_WHEELHOUSE),
                "--constraint",
                str(ROOT / "requirements" / "constraints.txt"),
                *requirements,
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip wheel failed:\n{result.stderr[-3000:]}")
        for wheel in partial.glob("switchyard_*.whl"):
            wheel.unlink()
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


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
