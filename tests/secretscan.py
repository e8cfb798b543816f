"""A check over the whole test run: no configured API key (nor a marked prompt)
appears in any server's log.

Every server the tests start logs under the run's temporary folder, which is
always watched; the cloud backends' key is always registered. Tests that
configure more keys or send marked prompts call :func:`register` with them
(and :func:`watch` for a folder elsewhere). When the session ends, every
``*.log`` under the watched folders is searched; a hit fails the run and
names the file (never the secret).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vendors import VALID_KEY

_SECRETS: set[str] = {VALID_KEY}  # the key the cloud backends' model servers are given
_ROOTS: set[Path] = set()


@pytest.fixture(autouse=True, scope="session")
def scan_this_runs_server_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Watches the run's temporary folder, where every server logs."""
    watch(tmp_path_factory.getbasetemp())


def register(*secrets: str) -> None:
    """Strings that must never be written to a server log."""
    _SECRETS.update(s for s in secrets if s)


def watch(root: Path) -> None:
    """A folder whose ``*.log`` files (recursively) are scanned at the end."""
    _ROOTS.add(root)


def leaks(roots: set[Path] | None = None, secrets: set[str] | None = None) -> list[str]:
    """``file: secret #n`` for every registered secret found in a log."""
    found = []
    ordered = sorted(_SECRETS if secrets is None else secrets)
    for root in sorted(roots if roots is not None else _ROOTS):
        for path in sorted(root.rglob("*.log")):
            text = path.read_bytes()
            for index, secret in enumerate(ordered):
                if secret.encode() in text:
                    found.append(f"{path}: registered secret #{index}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _SECRETS or not _ROOTS:
        return
    found = leaks()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if found:
        if reporter is not None:
            reporter.write_line("SECRET LEAK: configured API keys or prompts found in logs:")
            for line in found:
                reporter.write_line(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter is not None:
        logs = sum(1 for root in _ROOTS for _ in root.rglob("*.log"))
        reporter.write_line(
            f"secret scan: {len(_SECRETS)} keys and prompts, {logs} server logs: none found"
        )
