"""The Helm chart rendered offline through the Helm SDK, and lookups in what it renders."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[1] / "helm" / "switchyard"
RELEASE = "switchyard"
NAMESPACE = "llm"
ROUTER_NAME = f"{RELEASE}-router"
VALUES_DIR = CHART / "ci"  # the example values files, each rendered and checked


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` (NOTES.txt included)."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    present = [(d["kind"], d["metadata"]["name"]) for d in docs]
    raise AssertionError(f"no {kind} {name} in {present}")


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The one container of a Deployment's pods."""
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pool_name(pool: str) -> str:
    """The name of a model-server pool's objects (Deployment, headless Service, ...)."""
    return f"{RELEASE}-{pool}"


def config_of(docs: list[dict[str, Any]], name: str) -> str:
    """The config file a ConfigMap carries."""
    text: str = find(docs, "ConfigMap", name)["data"]["config.yaml"]
    return text


def load_values(name: str) -> dict[str, Any]:
    """An example values file of the chart (``defaults``: none)."""
    if name == "defaults":
        return {}
    values: dict[str, Any] = yaml.safe_load((VALUES_DIR / name).read_text())
    return values


@cache
def _render(name: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(render(load_values(name)).items()))


def rendered_files(name: str) -> dict[str, str]:
    """The chart rendered with an example values file: file name -> text (cached)."""
    return dict(_render(name))


def manifests(name: str) -> list[dict[str, Any]]:
    """The Kubernetes objects the chart renders with an example values file."""
    return documents(rendered_files(name))
