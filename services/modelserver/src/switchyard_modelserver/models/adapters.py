"""Where each model's LoRA adapters are: found in a folder, or registered by LoadAdapter.

A request names an adapter in its ``adapter`` field. The names a model has are
those in its adapters folder (looked up when asked, so an adapter copied in
later is found without a restart) plus those an operator registered with a
path (``ModelAdminService.LoadAdapter``). Engines load them; this module only
finds them, and refuses what does not exist with NOT_FOUND naming it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc

from switchyard_common.status import (
    FieldViolation,
    StatusError,
    adapter_not_found,
    invalid_argument,
)

ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What an adapter's name may be (it is also a file or folder name)."""

Layout = Callable[[Path, str], Path | None]
"""Finds adapter ``name`` inside a model's adapters folder (None: not there)."""


def gguf_file(folder: Path, name: str) -> Path | None:
    """llama.cpp's layout: ``<folder>/<name>.gguf``."""
    path = folder / f"{name}.gguf"
    return path if path.is_file() else None


def peft_folder(folder: Path, name: str) -> Path | None:
    """vLLM's layout: ``<folder>/<name>/adapter_config.json`` (a PEFT adapter)."""
    path = folder / name
    return path if (path / "adapter_config.json").is_file() else None


def check_name(name: str, field: str = "adapter") -> None:
    """INVALID_ARGUMENT unless ``name`` is a plain adapter name (no path)."""
    if not ADAPTER_NAME.fullmatch(name):
        raise invalid_argument(
            FieldViolation(
                field,
                "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
                "or digit",
            )
        )


class AdapterCatalog:
    """The LoRA adapters of each model of one backend."""

    def __init__(self, folder_of: Callable[[str], Path | None], layout: Layout) -> None:
        self._folder_of = folder_of  # a model's adapters folder (None: it has none)
        self._layout = layout
        self._registered: dict[str, dict[str, Path]] = {}

    def path(self, model_id: str, name: str) -> Path:
        """Where adapter ``name`` of the model is; NOT_FOUND naming it if nowhere."""
        found = self._registered.get(model_id, {}).get(name)
        if found is None and ADAPTER_NAME.fullmatch(name):
            folder = self._folder_of(model_id)
            found = self._layout(folder, name) if folder is not None else None
        if found is None:
            raise adapter_not_found(name, model_id, self.names(model_id))
        return found

    def names(self, model_id: str) -> list[str]:
        """Every adapter of the model, sorted."""
        names = set(self._registered.get(model_id, {}))
        folder = self._folder_of(model_id)
        if folder is not None and folder.is_dir():
            for entry in folder.iterdir():
                name = entry.name.removesuffix(".gguf")
                if ADAPTER_NAME.fullmatch(name) and self._layout(folder, name) == entry:
                    names.add(name)
        return sorted(names)

    def locate(self, model_id: str, name: str, path: str) -> Path:
        """Where LoadAdapter's ``path`` is: absolute, or relative to the model's adapters
        folder and inside it (INVALID_ARGUMENT for ``..``); empty: adapter ``name``
        as found now. NOT_FOUND when nothing is there."""
        check_name(name)
        if not path:
            return self.path(model_id, name)
        given = Path(path)
        if not given.is_absolute():
            folder = self._folder_of(model_id)
            if folder is None:
                raise invalid_argument(
                    FieldViolation("path", "must be absolute: this backend has no adapters_dir")
                )
            if ".." in given.parts:
                raise invalid_argument(
                    FieldViolation(
                        "path",
                        "a relative path is inside the model's adapters folder: no '..' "
                        "(give an absolute path for a file elsewhere)",
                    )
                )
            given = folder / given
        if not given.exists():
            raise StatusError(
                grpc.StatusCode.NOT_FOUND,
                f"adapter path {path!r} does not exist on the model server",
                reason="ADAPTER_NOT_FOUND",
                metadata={"adapter": name, "model": model_id},
            )
        return given

    def register(self, model_id: str, name: str, path: Path) -> None:
        """Makes ``path`` (from :meth:`locate`, once the engine loaded it) adapter
        ``name`` of the model."""
        self._registered.setdefault(model_id, {})[name] = path
