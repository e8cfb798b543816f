"""The Go and TypeScript examples, built from the generated stubs, against a live router.

Each example lists the models, generates, then streams the same prompt, and
prints one line per result (texts as JSON strings). The Python SDK's answer to
the same greedy request is the reference: the other languages must get the same
text, whole and streamed. The tool examples count a request's tokens, call a
tool, answer from its result and stream the call.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from processes import ServerProcess
from toolcases import WEATHER

from switchyard import Client

ROOT = Path(__file__).resolve().parent.parent
TYPESCRIPT = ROOT / "clients" / "typescript"
MODEL = "tiny"
PROMPT = "Hello world"
MAX_TOKENS = 12
TOOL_MODEL = "caller"  # a scripted model that calls get_weather (conftest)


@dataclass
class ExampleOutput:
    returncode: int
    stdout: str
    stderr: str

    def lines(self, kind: str) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith(f"{kind} ")]

    def text_and_fields(self, kind: str) -> tuple[str, dict[str, str]]:
        """The JSON text of the single ``kind`` line and its ``key=value`` fields."""
        [line] = self.lines(kind)
        text, end = json.JSONDecoder().raw_decode(line, len(kind) + 1)
        fields = dict(part.split("=", 1) for part in line[end:].split())
        return text, fields


@pytest.fixture(scope="module")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go example, built in GOPATH mode with Debian's Go packages."""
    binary = tmp_path_factory.mktemp("go") / "switchyard-example"
    subprocess.run(
        [str(ROOT / "clients" / "go" / "build.sh"), str(binary)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


def run_go(binary: Path, *args: str) -> ExampleOutput:
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )
    return ExampleOutput(result.returncode, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def go_tools_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go example that calls a tool."""
    binary = tmp_path_factory.mktemp("go") / "switchyard-tools-example"
    subprocess.run(
        [str(ROOT / "clients" / "go" / "build.sh"), str(binary), "switchyard-tools-example"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


def run_typescript(*args: str, script: str = "src/example.ts") -> ExampleOutput:
    tsx = TYPESCRIPT / "node_modules" / ".bin" / "tsx"
    result = subprocess.run(
        [str(tsx), script, *args],
        cwd=TYPESCRIPT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return ExampleOutput(result.returncode, result.stdout, result.stderr)


def python_reference(router: ServerProcess) -> str:
    with Client(router.address) as client:
        return client.generate(MODEL, PROMPT, max_tokens=MAX_TOKENS, temperature=0).text


def check_example_output(output: ExampleOutput, router: ServerProcess) -> None:
    assert output.returncode == 0, output.stderr
    listed = {line.split()[1]: line.split()[2] for line in output.lines("model")}
    assert listed[MODEL] == "MODEL_STATUS_READY"
    assert {"canned", "echo", "tiny-slow"} <= listed.keys()

    expected = python_reference(router)
    assert expected  # the tiny model always says something at temperature 0
    text, fields = output.text_and_fields("generate")
    assert text == expected
    assert fields["finish"] in {"FINISH_REASON_LENGTH", "FINISH_REASON_STOP"}
    assert 0 < int(fields["completion_tokens"]) <= MAX_TOKENS

    streamed, stream_fields = output.text_and_fields("stream")
    assert streamed == expected
    assert int(stream_fields["messages"]) >= 2  # text deltas, then the final message
    assert stream_fields["finish"] == fields["finish"]
    assert stream_fields["completion_tokens"] == fields["completion_tokens"]


def check_not_found(output: ExampleOutput) -> None:
    assert output.returncode == 1
    assert "error: NotFound: " in output.stderr
    assert "no-such-model" in output.stderr
    assert "tiny" in output.stderr  # the message lists the models that exist
    assert output.lines("model")  # listing worked before the generate failed
    assert not output.lines("generate")


def test_go_example_lists_generates_and_streams(go_example: Path, router: ServerProcess) -> None:
    output = run_go(
        go_example,
        "-target", router.address,
        "-model", MODEL,
        "-prompt", PROMPT,
        "-max-tokens", str(MAX_TOKENS),
    )  # fmt: skip
    check_example_output(output, router)


def test_go_example_reports_not_found_with_the_available_models(
    go_example: Path, router: ServerProcess
) -> None:
    output = run_go(go_example, "-target", router.address, "-model", "no-such-model")
    check_not_found(output)
    assert "reason: MODEL_NOT_FOUND" in output.stderr  # the ErrorInfo detail, decoded in Go


def test_typescript_example_lists_generates_and_streams(router: ServerProcess) -> None:
    output = run_typescript(
        "--target", router.address,
        "--model", MODEL,
        "--prompt", PROMPT,
        "--max-tokens", str(MAX_TOKENS),
    )  # fmt: skip
    check_example_output(output, router)


def test_typescript_example_reports_not_found(router: ServerProcess) -> None:
    output = run_typescript("--target", router.address, "--model", "no-such-model")
    check_not_found(output)
    assert "reason: MODEL_NOT_FOUND" in output.stderr  # the ErrorInfo detail, decoded in TS
    available = [line for line in output.stderr.splitlines() if line.startswith("available: ")]
    assert len(available) == 1
    assert "tiny" in available[0].removeprefix("available: ").split(",")


def check_tool_example_output(output: ExampleOutput, router: ServerProcess) -> None:
    """The tool examples: a count, the call, the answer to its result, the streamed call."""
    assert output.returncode == 0, output.stderr
    question = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    with Client(router.address) as client:
        counted = client.count_tokens(TOOL_MODEL, messages=question, tools=[WEATHER])
    [count] = output.lines("count")
    assert count.split()[1] == f"prompt_tokens={counted.prompt_tokens}"
    [finish] = output.lines("finish")
    assert finish.split()[1] == "FINISH_REASON_TOOL_CALLS"
    [call] = output.lines("call")
    name, arguments = call.split(" ", 2)[1:]
    assert name == "get_weather"
    assert json.loads(json.loads(arguments)) == {"city": "Paris", "unit": "celsius"}
    answer, fields = output.text_and_fields("answer")
    assert answer == "It is sunny in Paris."
    assert fields["finish"] == "FINISH_REASON_STOP"
    [streamed] = output.lines("stream-call")
    assert streamed.split(" ", 1)[1] == call.split(" ", 1)[1]


def test_go_tools_example_calls_a_tool_and_answers_with_its_result(
    go_tools_example: Path, router: ServerProcess
) -> None:
    output = run_go(go_tools_example, "-target", router.address, "-model", TOOL_MODEL)
    check_tool_example_output(output, router)


def test_typescript_tools_example_calls_a_tool_and_answers_with_its_result(
    router: ServerProcess,
) -> None:
    output = run_typescript(
        "--target", router.address, "--model", TOOL_MODEL, script="src/tools-example.ts"
    )
    check_tool_example_output(output, router)


def test_typescript_client_type_checks() -> None:
    tsc = TYPESCRIPT / "node_modules" / ".bin" / "tsc"
    result = subprocess.run(
        [str(tsc), "--noEmit"], cwd=TYPESCRIPT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
