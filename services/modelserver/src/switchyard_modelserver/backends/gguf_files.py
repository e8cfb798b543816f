"""GGUF files on disk: their header facts, the memory a model needs, and the folder
they live in (what was added, removed or replaced since the last look).

Read without llama.cpp: the header is parsed here (a few scalar keys; arrays
such as the vocabulary are skipped over), so sizing every file of a large
folder costs a few reads each, not a load.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
# Value types of GGUF metadata: size in bytes of each fixed-size one.
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALAR |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KV_CACHE_BYTES_PER_VALUE = 2  # llama.cpp's KV cache is f16 unless told otherwise


class GGUFError(ValueError):
    """Not a GGUF file we can read."""


def read_metadata(path: Path) -> dict[str, object]:
    """The scalar metadata of a GGUF file (strings and numbers; arrays are skipped)."""
    with path.open("rb") as file:
        if file.read(4) != _MAGIC:
            raise GGUFError(f"{path.name} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", _exactly(file, 20))
        if version < 2:
            raise GGUFError(f"{path.name}: GGUF version {version} is too old")
        metadata: dict[str, object] = {}
        for _ in range(count):
            key = _string(file)
            (kind,) = struct.unpack("<I", _exactly(file, 4))
            value = _value(file, kind)
            if value is not None:
                metadata[key] = value
        return metadata


def _exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return data


def _string(file: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _exactly(file, 8))
    if length > 1 << 24:
        raise GGUFError("implausible string length in GGUF header")
    return _exactly(file, length).decode("utf-8", errors="replace")


def _value(file: BinaryIO, kind: int) -> object:
    if kind in _SCALAR:
        fmt = _SCALAR[kind]
        return struct.unpack(fmt, _exactly(file, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(file)
    if kind == _ARRAY:
        item_kind, count = struct.unpack("<IQ", _exactly(file, 12))
        if item_kind in _FIXED:
            file.seek(_FIXED[item_kind] * count, os.SEEK_CUR)
        elif item_kind == _STRING:
            for _ in range(count):
                (length,) = struct.unpack("<Q", _exactly(file, 8))
                file.seek(length, os.SEEK_CUR)
        else:
            raise GGUFError(f"unsupported GGUF array of type {item_kind}")
        return None
    raise GGUFError(f"unsupported GGUF value type {kind}")


@dataclass(frozen=True)
class ModelSize:
    """What a GGUF model needs in memory at a given context length."""

    file_bytes: int
    kv_cache_bytes: int
    context_length: int

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.kv_cache_bytes


def model_size(path: Path, context_length: int) -> ModelSize:
    """The file (its weights are mapped into memory) plus an f16 KV cache for
    ``context_length`` tokens (capped by what the model was trained for). An
    estimate of what llama.cpp allocates, without its scratch buffers."""
    metadata = read_metadata(path)
    architecture = str(metadata.get("general.architecture", "llama"))

    def number(key: str, default: int) -> int:
        value = metadata.get(f"{architecture}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    trained = number("context_length", context_length)
    context = min(context_length, trained) if trained > 0 else context_length
    layers = number("block_count", 0)
    width = number("embedding_length", 0)
    heads = max(number("attention.head_count", 1), 1)
    kv_heads = number("attention.head_count_kv", heads)
    key_length = number("attention.key_length", width // heads)
    value_length = number("attention.value_length", width // heads)
    per_token = layers * kv_heads * (key_length + value_length) * _KV_CACHE_BYTES_PER_VALUE
    return ModelSize(path.stat().st_size, per_token * context, context)


@dataclass(frozen=True)
class FileVersion:
    """What tells one version of a file from the next."""

    inode: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderChanges:
    """What changed in a folder since the last scan (files settled for one scan)."""

    added: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()
    replaced: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.replaced)


class ModelsFolder:
    """Follows the ``*.gguf`` files of a folder by scanning it.

    A file counts as added or replaced only once it looked the same on two
    scans in a row, so a file still being copied in is not loaded half-written
    (write elsewhere and rename into the folder to make it appear at once).
    """

    def __init__(self, directory: Path, wanted: Callable[[Path], bool] = lambda _: True) -> None:
        self.directory = directory
        self._wanted = wanted
        self._known: dict[Path, FileVersion] = {}
        self._pending: dict[Path, FileVersion] = {}

    def files(self) -> list[Path]:
        """The files known now, sorted."""
        return sorted(self._known)

    def prime(self) -> list[Path]:
        """Takes the folder as it is now as known (at start) and returns its files."""
        self._known = self._scan()
        self._pending.clear()
        return self.files()

    def changes(self) -> FolderChanges:
        """Scans the folder and returns what changed since the last call."""
        seen = self._scan()
        removed = tuple(sorted(p for p in self._known if p not in seen))
        for path in removed:
            del self._known[path]
        added: list[Path] = []
        replaced: list[Path] = []
        for path, version in seen.items():
            if self._known.get(path) == version:
                self._pending.pop(path, None)
                continue
            if self._pending.get(path) != version:
                self._pending[path] = version  # settle: act on the next scan if unchanged
                continue
            del self._pending[path]
            (replaced if path in self._known else added).append(path)
            self._known[path] = version
        for path in [p for p in self._pending if p not in seen]:
            del self._pending[path]
        return FolderChanges(tuple(sorted(added)), removed, tuple(sorted(replaced)))

    def _scan(self) -> dict[Path, FileVersion]:
        found: dict[Path, FileVersion] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if not entry.name.endswith(".gguf") or entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if not self._wanted(path):
                continue
            try:
                stat = entry.stat()  # follows symbolic links
            except FileNotFoundError:
                continue
            found[path] = FileVersion(stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return found
