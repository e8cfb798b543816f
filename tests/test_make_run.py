"""`make run` itself: it sets up, starts the model server and the router
(scripts/run-local.sh), prints a line to try that works, and Ctrl-C stops both.

The tiny model stands in for SmolLM2 (SWITCHYARD_MODEL_FILE / SWITCHYARD_MODEL_ID)
and the ports are free ones, so it runs beside anything else on the machine.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from processes import free_port, health_status, wait_until

from switchyard import Client

ROOT = Path(__file__).resolve().parents[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(300)
def test_make_run_serves_the_model_through_the_router_and_stops_on_ctrl_c(
    models_dir: Path, tmp_path: Path
) -> None:
    router_port, modelserver_port, http_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SWITCHYARD_ROUTER_PORT": str(router_port),
        "SWITCHYARD_HTTP_PORT": str(http_port),
        "SWITCHYARD_MODELSERVER_PORT": str(modelserver_port),
        "SWITCHYARD_MODELS_DIR": str(tmp_path / "models"),
        "SWITCHYARD_MODEL_FILE": str(models_dir / "tiny.gguf"),
        "SWITCHYARD_MODEL_ID": "tiny",
        "SWITCHYARD_THREADS": "1",
    }
    # A session of its own: Ctrl-C goes to the whole foreground group, as in a terminal.
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: "Switchyard is up" in "".join(output) or process.poll() is not None,
            "make run to start both servers",
            timeout=180,
        )
        text = "".join(output)
        assert "Switchyard is up" in text, text
        assert f"router        127.0.0.1:{router_port}" in text
        assert f"model server  127.0.0.1:{modelserver_port}" in text

        with Client(f"127.0.0.1:{router_port}", timeout=30) as client:
            routed = client.generate("tiny", "hello world", max_tokens=4, temperature=0)
        with Client(f"127.0.0.1:{modelserver_port}", timeout=30) as client:
            direct = client.generate("tiny", "hello world", max_tokens=4, temperature=0)
        assert (routed.model, routed.backend) == ("tiny", "llamacpp")
        assert routed.usage.completion_tokens == 4
        assert routed.text == direct.text

        # The grpcurl line it prints works as printed.
        [line] = [line.strip() for line in text.splitlines() if "grpcurl" in line]
        tried = subprocess.run(
            shlex.split(line), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert tried.returncode == 0, tried.stderr
        answer = json.loads(tried.stdout)
        assert (answer["model"], answer["backend"]) == ("tiny", "llamacpp")
        assert answer["usage"]["completionTokens"] == 16

        # So does the curl line, against the router's OpenAI-compatible HTTP front.
        [line] = [line.strip() for line in text.splitlines() if line.strip().startswith("curl")]
        tried = subprocess.run(
            shlex.split(line), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert tried.returncode == 0, tried.stderr
        chat = json.loads(tried.stdout)
        assert chat["object"] == "chat.completion" and chat["model"] == "tiny"
        assert chat["usage"]["completion_tokens"] == 16
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        process.wait(timeout=60)
        reader.join(timeout=10)
    # Both servers drained and exited: nothing listens on their ports any more.
    assert not any(_listening(port) for port in (router_port, modelserver_port, http_port))
    assert health_status(f"127.0.0.1:{router_port}") == "UNREACHABLE"
    text = "".join(output)
    assert "switchyard.router: stopped" in text, text[-3000:]
    assert "switchyard.modelserver: stopped" in text, text[-3000:]
