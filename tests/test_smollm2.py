"""The real model: SmolLM2-135M-Instruct through the router, and the README's grpcurl lines."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import smollm2_path, start_modelserver, start_router
from processes import ServerProcess

from switchyard import Client, FinishReason, Tool
from switchyard.cli import main as cli

README = Path(__file__).resolve().parent.parent / "README.md"
LOCAL_CONFIG = README.parent / "deploy" / "local" / "modelserver.yaml"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2_stack(workdir: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """`make run`'s pair: a llamacpp model server with SmolLM2 and a router."""
    directory = workdir / "smollm2"
    directory.mkdir()
    (directory / f"{MODEL}.gguf").symlink_to(smollm2_path())
    shipped = yaml.safe_load(LOCAL_CONFIG.read_text())  # make run's model defaults
    server = start_modelserver(
        workdir,
        "smollm2-modelserver",
        {
            "backend": {"kind": "llamacpp", "models_dir": str(directory), "context_length": 2048},
            "model_defaults": shipped["model_defaults"],
        },
    )
    router = start_router(
        workdir,
        "smollm2-router",
        {
            "clusters": {"cpu": {"endpoints": [server.address]}},
            "routes": [{"model": MODEL, "targets": [{"cluster": "cpu"}]}],
        },
    )
    yield server, router
    router.stop()
    server.stop()


def test_smollm2_knows_the_capital_of_france(
    smollm2_stack: tuple[ServerProcess, ServerProcess],
) -> None:
    _, router = smollm2_stack
    with Client(router.address) as client:
        completion = client.generate(
            MODEL, "The capital of France is", max_tokens=16, temperature=0
        )
        chat = client.chat(
            MODEL,
            [{"role": "user", "content": "Which city is the capital of France?"}],
            max_tokens=24,
            temperature=0,
        )
    assert "Paris" in completion.text
    assert "Paris" in chat.text
    assert chat.finish_reason.value == "stop"  # the model ends its answer itself


WEATHER = Tool(
    "get_weather",
    "Get the current weather in a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)


def test_smollm2_calls_a_weather_tool_with_arguments_that_match_its_schema(
    smollm2_stack: tuple[ServerProcess, ServerProcess],
) -> None:
    _, router = smollm2_stack
    question = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
    with Client(router.address, timeout=120) as client:
        for choice in ("required", "get_weather"):
            answer = client.chat(
                MODEL, question, tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False
            )
            assert answer.finish_reason is FinishReason.TOOL_CALLS
            [call] = answer.tool_calls
            arguments = call.parsed_arguments()
            jsonschema.validate(arguments, WEATHER.parameters)
            assert call.name == "get_weather"
            assert arguments["city"] == "Paris"


def test_the_readme_chat_line_answers_sensibly_with_the_shipped_defaults(
    smollm2_stack: tuple[ServerProcess, ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    _, router = smollm2_stack
    line = 'switchyard chat smollm2-135m-instruct "Which city is the capital of France?"'
    assert line in README.read_text()
    status = cli(["--target", router.address, *shlex.split(line)[1:]])
    assert status == 0
    assert "Paris" in capsys.readouterr().out


def _readme_grpcurl_lines() -> list[str]:
    text = README.read_text()
    section = text[text.index("### grpcurl") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README lost its grpcurl block"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def _json_objects(text: str) -> list[dict[str, object]]:
    decoder = json.JSONDecoder()
    objects, position = [], 0
    text = text.strip()
    while position < len(text):
        value, end = decoder.raw_decode(text, position)
        objects.append(value)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return objects


def _grpcurl() -> str:
    return shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


def _run_readme_line(
    line: str, router: ServerProcess, server: ServerProcess
) -> subprocess.CompletedProcess[str]:
    line_here = line.replace("localhost:50051", router.address)
    args = shlex.split(line_here.replace("localhost:50061", server.address))
    return subprocess.run(
        [_grpcurl(), *args[1:]], capture_output=True, text=True, timeout=120, check=False
    )


def test_readme_grpcurl_lines_work_as_written(
    smollm2_stack: tuple[ServerProcess, ServerProcess],
) -> None:
    server, router = smollm2_stack
    lines = _readme_grpcurl_lines()
    assert len(lines) >= 6
    outputs: list[tuple[str, str]] = []
    for line in lines:
        result = _run_readme_line(line, router, server)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        outputs.append((line, result.stdout))

    def by_kind(matches: str) -> dict[str, list[str]]:
        """Outputs of the lines running `matches`, by the server they call."""
        found: dict[str, list[str]] = {"router": [], "modelserver": []}
        for line, output in outputs:
            if re.search(matches, line):
                found["router" if "localhost:50051" in line else "modelserver"].append(output)
        assert found["router"] and found["modelserver"], f"README lacks {matches} for both servers"
        return found

    for output in [*by_kind(r" list$")["router"], *by_kind(r" list$")["modelserver"]]:
        assert "switchyard.v1.LLMService" in output
        assert "grpc.health.v1.Health" in output
    for outputs_of in by_kind(r" describe ").values():
        assert "switchyard.v1." in outputs_of[0]
    for outputs_of in by_kind(r"LLMService/Generate$").values():
        for output in outputs_of:  # prompts, the chat request, the tool call, the JSON answer
            answer = json.loads(output)
            if "toolCalls" in answer:
                assert answer["finishReason"] == "FINISH_REASON_TOOL_CALLS"
                assert json.loads(answer["toolCalls"][0]["arguments"]) == {"city": "Paris"}
            else:
                assert "Paris" in answer["text"]
    for outputs_of in by_kind(r"/CountTokens$").values():
        assert json.loads(outputs_of[0])["promptTokens"] > 0
    for outputs_of in by_kind(r"/StreamGenerate$").values():
        messages = _json_objects(outputs_of[0])
        assert len(messages) > 2
        assert "Paris" in "".join(str(m.get("text", "")) for m in messages)
        assert messages[-1]["finishReason"] == "FINISH_REASON_LENGTH"
    for outputs_of in by_kind(r"Health/Check$").values():
        assert json.loads(outputs_of[0])["status"] == "SERVING"
    models = [output for line, output in outputs if line.endswith("/ListModels")]
    [model] = json.loads(models[0])["models"]
    assert (model["id"], model["status"]) == (MODEL, "MODEL_STATUS_READY")


def test_readme_grpcurl_error_example_is_what_grpcurl_prints(
    smollm2_stack: tuple[ServerProcess, ServerProcess],
) -> None:
    server, router = smollm2_stack
    text = README.read_text()
    section = text[text.index("A bad request shows its details") :]
    block = re.search(r"```\n\$ (grpcurl .*?)\n(.*?)```", section, re.S)
    assert block is not None, "README lost its grpcurl error example"
    result = _run_readme_line(block.group(1), router, server)
    assert result.returncode != 0
    assert result.stderr.strip() == block.group(2).strip()


def test_readme_tools_example_runs_on_smollm2(
    smollm2_stack: tuple[ServerProcess, ServerProcess],
) -> None:
    _, router = smollm2_stack
    text = README.read_text()
    section = text[text.index("#### Tools, structured output and token counts") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "README lost its tools example"
    # A busy test machine may take longer than the SDK's default 60 s per call.
    code = block.group(1).replace('"localhost:50051"', f'"{router.address}", timeout=300')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr
    count, answer, city, code_line = result.stdout.splitlines()
    assert int(count) > 0
    assert "Paris" in answer  # answered from the tool's result
    assert city == "name='Paris' country='France'"
    assert re.fullmatch("[a-z]{3}-[0-9]{2}", code_line)
