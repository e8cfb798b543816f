"""docs/architecture.md matches the code: the concern table names every module that
exists and no module that does not, and the ``module.name`` references in the request
paths point at names the modules define.

Read as text (nothing imported), so it runs in a second and checks even the modules
whose engines are not installed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The fenced drawing's backticks would pair with the prose's: leave the fences out.
DOC = re.sub(r"```.*?```", "", (ROOT / "docs" / "architecture.md").read_text(), flags=re.S)
SOURCE_ROOTS = [
    ROOT / "clients" / "python" / "src",
    ROOT / "services" / "common" / "src",
    ROOT / "services" / "router" / "src",
    ROOT / "services" / "modelserver" / "src",
]
GENERATED = ROOT / "clients" / "python" / "src" / "switchyard" / "v1"
# Only paths in backticks count; a name in the prose that is not a path is no claim.
CODE_SPAN = re.compile(r"`([^`]+)`")


def _modules() -> dict[str, Path]:
    """Every hand-written module by its path below its source root (``switchyard_router/x.py``)."""
    found: dict[str, Path] = {}
    for source_root in SOURCE_ROOTS:
        for path in source_root.rglob("*.py"):
            if path.name in ("__init__.py", "__main__.py") or GENERATED in path.parents:
                continue
            found[path.relative_to(source_root).as_posix()] = path
    return found


MODULES = _modules()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def _table_rows() -> list[str]:
    table = _section("Where each concern lives")
    return [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]


def _resolve(token: str, folder: str) -> list[str]:
    """The modules a table cell's path names: a path with a folder matches the modules
    whose path ends with it; a bare file name is in the folder the cell named last."""
    if "/" in token:
        return [m for m in MODULES if m == token or m.endswith("/" + token)]
    return [m for m in MODULES if m.endswith("/" + folder + token) or m == folder + token]


def _table_claims() -> tuple[set[str], list[str]]:
    """The modules the table names, and the paths in it that name no module."""
    named: set[str] = set()
    missing: list[str] = []
    for row in _table_rows():
        folder = ""
        for token in CODE_SPAN.findall(row.split("|", 2)[2]):
            if token.endswith("/"):
                folder = token
                continue
            if not token.endswith(".py"):
                continue
            if token.startswith(("benchmarks/", "tests/")):
                if not (ROOT / token).is_file():
                    missing.append(token)
                continue
            matches = _resolve(token, folder)
            if len(matches) != 1:
                missing.append(f"{token} (in folder {folder or '-'}: {matches or 'none'})")
                continue
            named.add(matches[0])
            if "/" in token:
                folder = token.rsplit("/", 1)[0] + "/"
    return named, missing


def test_every_module_in_the_concern_table_exists() -> None:
    _, missing = _table_claims()
    assert not missing, f"docs/architecture.md's table names modules that do not exist: {missing}"


def test_every_module_is_in_the_concern_table() -> None:
    named, _ = _table_claims()
    absent = sorted(set(MODULES) - named)
    assert not absent, f"modules docs/architecture.md's table does not place: {absent}"


def test_every_test_helper_and_benchmark_helper_is_in_the_concern_table() -> None:
    table = "\n".join(_table_rows())
    helpers = [p for p in (ROOT / "tests").glob("*.py") if not p.name.startswith("test_")]
    helpers.append(ROOT / "benchmarks" / "harness.py")
    absent = sorted(
        path.relative_to(ROOT).as_posix()
        for path in helpers
        if f"`{path.relative_to(ROOT).as_posix()}`" not in table
    )
    assert not absent, f"helpers docs/architecture.md's table does not place: {absent}"


def test_the_folders_the_doc_names_exist() -> None:
    folders = {t for t in CODE_SPAN.findall(DOC) if re.fullmatch(r"[\w.-]+(/[\w.-]+)*/", t)}
    missing = []
    for folder in sorted(folders):
        if (ROOT / folder).is_dir():
            continue
        bases = [
            ROOT,
            *SOURCE_ROOTS,
            *[ROOT / "services" / s for s in ("common", "router", "modelserver")],
        ]
        trees = [p for base in bases for p in base.rglob(folder.rstrip("/")) if p.is_dir()]
        if not trees:
            missing.append(folder)
    assert not missing, f"docs/architecture.md names folders that do not exist: {missing}"


def test_every_file_the_doc_names_exists() -> None:
    names = {t for t in CODE_SPAN.findall(DOC) if re.fullmatch(r"[\w./-]+\.(py|proto|lua)", t)}
    missing = []
    for name in sorted(names):
        if (ROOT / name).is_file():
            continue
        if not any(p.as_posix().endswith("/" + name) for p in ROOT.rglob(Path(name).name)):
            missing.append(name)
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def _module_named(stem: str) -> list[Path]:
    return [path for module, path in MODULES.items() if Path(module).stem == stem]


def _config_fields() -> str:
    return "\n".join(path.read_text() for m, path in MODULES.items() if m.endswith("config.py"))


def test_the_names_the_request_paths_cite_are_defined() -> None:
    """``picker.Picker.pick``, ``wire.read_model``: each part a name its module defines
    (a dotted config key such as ``limits.max_in_flight`` is a field of a config schema)."""
    undefined = []
    config_fields = _config_fields()
    for token in set(CODE_SPAN.findall(DOC)):
        parts = token.removesuffix("()").split(".")
        if (
            len(parts) < 2
            or not all(p.isidentifier() for p in parts)
            or parts[-1] in ("py", "proto", "lua", "md", "yaml")
        ):
            continue
        files = _module_named(parts[0])
        if re.search(rf"^\s+{parts[-1]}\s*:", config_fields, re.M):
            continue
        if not files:
            continue  # a class or attribute path (Endpoint.reported), checked below if a module
        text = "\n".join(path.read_text() for path in files)
        for name in parts[1:]:
            if not re.search(rf"(def|class)\s+{name}\b|^\s*{name}\s*[:=]|\b{name}\s*:", text, re.M):
                undefined.append(token)
                break
    assert not undefined, f"docs/architecture.md cites names no module defines: {sorted(undefined)}"


def test_every_call_ends_through_the_one_abort() -> None:
    """The page's rule: a handler ends a call with ``switchyard_common.status.abort``,
    the one place that calls grpcio's ``context.abort``."""
    one_way = ROOT / "services" / "common" / "src" / "switchyard_common" / "status.py"
    others = [
        f"{module}:{number}"
        for module, path in MODULES.items()
        if path != one_way
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if re.search(r"\bcontext\.abort\(|\.set_code\(", line)
    ]
    assert not others, f"calls ended without switchyard_common.status.abort: {others}"
