"""Which packages a module pulls in: imported in a fresh interpreter that refuses the
packages it must not reach for (the layering the architecture promises)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable

_PROBE = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {refused!r}:
            raise ImportError("imported " + name)
        return None
sys.meta_path.insert(0, Refuse())
import {modules}
print("ok")
"""


def assert_imports_none_of(refused: Iterable[str], *modules: str) -> None:
    """Fails, naming the import, if importing ``modules`` reaches a ``refused`` package."""
    probe = _PROBE.format(refused=set(refused), modules=", ".join(modules))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
