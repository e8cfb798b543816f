"""The Python wheels the container images install, fetched once and then used offline.

    python3 scripts/image_wheels.py download   # set-up (scripts/setup.d/40-containers.sh): online
    python3 scripts/image_wheels.py gather     # tests: --no-index; prints the folder

``download`` puts every wheel the images need (the pinned dependencies of the
router, the CPU model server and the cloud model server, and the build tools
of our own packages) in ~/.cache/switchyard/image-wheels/downloads; pip skips
what is already there. ``gather`` builds our own packages against those with
``pip wheel --no-index`` into a folder keyed by the pins, which the tests copy
into the build context (deploy/docker/wheels/): a build at test time never
reaches an index, and a set-up that did not fetch something fails there,
naming it. llama-cpp-python comes from the portable wheel
scripts/build-llamacpp-wheel.sh built (the wheelhouse); until that exists,
``download`` takes its source distribution only to learn its dependencies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "switchyard"
DOWNLOADS = CACHE / "image-wheels" / "downloads"
WHEELHOUSE = Path(os.environ.get("SWITCHYARD_WHEELHOUSE", CACHE / "wheelhouse"))
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
PROJECTS = [
    ROOT / "clients" / "python",
    ROOT / "services" / "common",
    ROOT / "services" / "router",
    ROOT / "services" / "modelserver",
]
# Our packages with every extra an image installs (absent extras are only a
# warning), and what building them needs.
REQUIREMENTS = [
    "setuptools>=68",
    "wheel",
    str(PROJECTS[0]),
    str(PROJECTS[1]),
    str(PROJECTS[2]),
    f"{PROJECTS[3]}[llamacpp,openai,anthropic,ollama]",
]


def _pip(*args: str, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs pip; ``isolated``: without the machine's pip configuration (its indexes
    and find-links), so only the folders named here count."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull} if isolated else None
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env)


def download() -> None:
    """Fetches every wheel the images need into DOWNLOADS (set-up; needs an index)."""
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    result = _pip(
        "download",
        "--dest",
        str(DOWNLOADS),
        "--find-links",
        str(WHEELHOUSE),
        "--constraint",
        str(CONSTRAINTS),
        *REQUIREMENTS,
    )
    if result.returncode != 0:
        sys.exit(f"pip download of the images' wheels failed:\n{result.stderr[-3000:]}")
    # pip download leaves an archive of each local project; they are built in gather().
    for stale in DOWNLOADS.glob("switchyard*"):
        stale.unlink()
    print(f"setup: the images' wheels are in {DOWNLOADS}")


def _key() -> str:
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode())
    digest.update(CONSTRAINTS.read_bytes())
    for project in PROJECTS:
        digest.update((project / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def gather() -> Path:
    """Every wheel an image installs, ours built from source, with no index.

    Raises ``LookupError`` naming what the set-up did not fetch."""
    target = DOWNLOADS.parent / _key()
    if target.is_dir():
        return target
    if not DOWNLOADS.is_dir():
        raise LookupError(f"{DOWNLOADS} is missing: run `make setup` (scripts/setup.d/)")
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        result = _pip(
            "wheel",
            "--no-index",
            "--find-links",
            str(DOWNLOADS),
            "--find-links",
            str(WHEELHOUSE),
            "--wheel-dir",
            str(partial),
            "--constraint",
            str(CONSTRAINTS),
            *REQUIREMENTS,
            isolated=True,
        )
        if result.returncode != 0:
            lines = result.stderr.splitlines()
            missing = [line for line in lines if "ERROR" in line or "Could not find" in line]
            raise LookupError(
                "the images' wheels are not all in the set-up's downloads "
                f"({DOWNLOADS}; run `make setup`):\n" + "\n".join(missing or lines[-20:])
            )
        for ours in partial.glob("switchyard_*.whl"):
            ours.unlink()  # the images build our packages from the context's source
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def main() -> None:
    command = sys.argv[1] if len(sys.argv) == 2 else ""
    if command == "download":
        download()
    elif command == "gather":
        try:
            print(gather())
        except LookupError as error:
            sys.exit(str(error))
    else:
        sys.exit(f"usage: {sys.argv[0]} download|gather")


if __name__ == "__main__":
    main()
