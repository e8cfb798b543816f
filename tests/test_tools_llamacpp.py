"""Tools and structured output on the llamacpp backend (tiny random models), direct and
through the router: constrained decoding makes even a random model's calls and JSON
parse and match their schemas."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from conftest import start_modelserver
from processes import ServerProcess
from toolcases import (
    CITY_SCHEMA,
    QUESTION,
    TIME,
    TOOLS,
    WEATHER,
    check_calls,
    same_answer,
    tool_round,
)

from switchyard import Client, FinishReason, Grammar, InvalidArgumentError, JsonSchema, Regex, Tool

MODEL = "tiny"


@pytest.fixture(params=["router", "direct"])
def client(
    request: pytest.FixtureRequest, router: ServerProcess, llama_server: ServerProcess
) -> Iterator[Client]:
    target = router if request.param == "router" else llama_server
    with Client(target.address, timeout=60) as c:
        yield c


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
def test_required_tool_calls_parse_and_match_their_schemas(client: Client, strict: bool) -> None:
    """The grammar holds every call to its schema, so strict tools are taken as they are."""
    answer = client.chat(
        MODEL,
        QUESTION,
        tools=[dataclasses.replace(tool, strict=strict) for tool in TOOLS],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        temperature=0,
    )
    assert answer.finish_reason is FinishReason.TOOL_CALLS
    check_calls(answer.tool_calls)
    assert answer.text == ""


def test_a_named_tool_is_the_one_called(client: Client) -> None:
    for seed in (1, 2, 3):
        answer = client.chat(
            MODEL, QUESTION, tools=TOOLS, tool_choice="get_time", max_tokens=150, seed=seed
        )
        assert answer.finish_reason is FinishReason.TOOL_CALLS
        calls = check_calls(answer.tool_calls)
        assert [c.name for c in calls] == ["get_time"]


def test_a_tool_call_stream_reassembles_to_the_unary_answer(client: Client) -> None:
    options = dict(
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=150,
        temperature=0,
    )
    unary = client.chat(MODEL, QUESTION, **options)  # type: ignore[arg-type]
    same_answer(unary, client.stream(MODEL, messages=QUESTION, **options))  # type: ignore[arg-type]


def test_a_tool_result_goes_back_and_the_model_answers(client: Client) -> None:
    tools = [WEATHER]
    answer = client.chat(
        MODEL, QUESTION, tools=tools, tool_choice="get_weather", max_tokens=120, temperature=0
    )
    check_calls(answer.tool_calls, tools)
    conversation = [*QUESTION, *tool_round(answer, {"temperature": 21})]
    final = client.chat(
        MODEL, conversation, tools=tools, tool_choice="none", max_tokens=16, temperature=0
    )
    assert final.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert not final.tool_calls
    # The call and its result are in the prompt (tool_choice none: the tools are not).
    question_alone = client.count_tokens(MODEL, messages=QUESTION).prompt_tokens
    assert final.usage.prompt_tokens > question_alone + 30


def test_json_schema_output_matches_the_schema(client: Client) -> None:
    for seed in (1, 2):
        answer = client.chat(
            MODEL, QUESTION, response_format=CITY_SCHEMA, max_tokens=150, seed=seed
        )
        assert answer.finish_reason is FinishReason.STOP
        jsonschema.validate(answer.json(), CITY_SCHEMA)


def test_json_object_output_is_a_json_object(client: Client) -> None:
    answer = client.generate(
        MODEL, "JSON:", response_format="json_object", max_tokens=300, temperature=0
    )
    if answer.finish_reason is FinishReason.STOP:  # a random model may write a long object
        assert isinstance(answer.json(), dict)
    else:
        assert answer.text.startswith("{")


def test_regex_and_grammar_outputs_match(client: Client) -> None:
    import re

    answer = client.generate(
        MODEL, "code:", response_format=Regex("[a-z]{3}-[0-9]{2}"), max_tokens=20, temperature=0
    )
    assert re.fullmatch("[a-z]{3}-[0-9]{2}", answer.text), answer.text
    answer = client.generate(
        MODEL,
        "yes or no?",
        response_format=Grammar('root ::= "yes" | "no"'),
        max_tokens=20,
        temperature=0,
    )
    assert answer.text in ("yes", "no")
    assert answer.finish_reason is FinishReason.STOP


def test_count_tokens_is_the_prompt_tokens_of_the_same_chat(client: Client) -> None:
    counted = client.count_tokens(MODEL, messages=QUESTION, tools=TOOLS)
    answer = client.chat(MODEL, QUESTION, tools=TOOLS, max_tokens=1, temperature=0)
    assert counted.prompt_tokens == answer.usage.prompt_tokens
    assert counted.context_length == 1024
    assert counted.backend == "llamacpp"
    without_tools = client.count_tokens(MODEL, messages=QUESTION)
    assert without_tools.prompt_tokens < counted.prompt_tokens
    assert (
        client.count_tokens(MODEL, "hello world").prompt_tokens
        == client.generate(MODEL, "hello world", max_tokens=1).usage.prompt_tokens
    )


def _violation(error: pytest.ExceptionInfo[InvalidArgumentError]) -> dict[str, str]:
    return {v.field: v.description for v in error.value.field_violations}


def test_a_schema_keyword_the_grammar_cannot_enforce_is_refused(client: Client) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}
    with pytest.raises(InvalidArgumentError) as error:
        client.chat(MODEL, QUESTION, response_format=JsonSchema(schema), max_tokens=8)
    assert "/properties/n/minimum" in _violation(error)["response_format.json_schema.schema"]


def test_a_grammar_llama_cpp_cannot_parse_is_refused(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.generate(
            MODEL, "x", response_format=Grammar("root ::= undefined-rule"), max_tokens=8
        )
    assert "response_format.grammar" in _violation(error)


def test_tools_need_a_chat(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        client.generate(MODEL, "x", tools=[WEATHER], max_tokens=8)
    assert "tools" in _violation(error)


def test_time_tool_schema_round_trips() -> None:
    assert json.loads(json.dumps(TIME.parameters)) == TIME.parameters


PLAIN_TEMPLATE = (
    "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)
# Formats only system, user and assistant turns, as many real templates do.
THREE_ROLES_TEMPLATE = (
    "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Reaches for Python internals; the sandbox must stop it.
ESCAPING_TEMPLATE = "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages }}"
# Asks for more than the sandbox allows (a range past its MAX_RANGE: OverflowError).
OVERREACHING_TEMPLATE = "{% for i in range(10**9) %}{{ i }}{% endfor %}{{ messages }}"


@pytest.fixture(scope="module")
def templated(workdir: Path, models_dir: Path) -> Iterator[ServerProcess]:
    """A llamacpp model server whose tiny models have configured templates and defaults."""
    server = start_modelserver(
        workdir,
        "templated-modelserver",
        {
            "backend": {
                "kind": "llamacpp",
                "models_dir": str(models_dir),
                "threads": 1,
                "context_length": 1024,
                "models": [
                    {"file": "tiny.gguf"},
                    {"file": "tiny-slow.gguf"},
                    {"file": "tiny-q4.gguf"},
                ],
            },
            "model_defaults": {
                "tiny": {"chat_template": PLAIN_TEMPLATE, "system_prompt": "Be brief."},
                "tiny-slow": {"chat_template": ESCAPING_TEMPLATE},
                "tiny-q4": {"chat_template": THREE_ROLES_TEMPLATE},
                "tiny-strict": {"chat_template": OVERREACHING_TEMPLATE},
            },
        },
    )
    yield server
    server.stop()


def test_a_configured_chat_template_formats_the_chat(templated: ServerProcess) -> None:
    with Client(templated.address, timeout=30) as client:
        counted = client.count_tokens(MODEL, messages=QUESTION)
        rendered = "[system] Be brief.\n[user] What is the weather in Paris?\n[assistant] "
        assert counted.prompt_tokens == client.count_tokens(MODEL, rendered).prompt_tokens
        [model] = [m for m in client.list_models() if m.id == MODEL]
        assert model.defaults is not None
        assert model.defaults.chat_template_override
        assert model.defaults.system_prompt == "Be brief."


def test_a_chat_template_runs_in_a_sandbox(templated: ServerProcess) -> None:
    with (
        Client(templated.address, timeout=30) as client,
        pytest.raises(InvalidArgumentError) as error,
    ):
        client.chat("tiny-slow", QUESTION, max_tokens=4)
    assert "chat template refused" in _violation(error)["messages"]
    assert "unsafe" in _violation(error)["messages"]


def test_whatever_a_chat_template_raises_is_its_refusal_not_an_internal_error(
    templated: ServerProcess,
) -> None:
    with Client(templated.address, timeout=30, max_retries=0) as client:
        for call in (
            lambda: client.chat("tiny-strict", QUESTION, max_tokens=4),
            lambda: client.count_tokens("tiny-strict", messages=QUESTION),
        ):
            with pytest.raises(InvalidArgumentError) as error:
                call()
            assert "refused them: OverflowError" in _violation(error)["messages"]


def test_tool_results_reach_a_template_that_knows_only_three_roles(
    templated: ServerProcess,
) -> None:
    tools = [WEATHER]
    with Client(templated.address, timeout=60) as client:
        answer = client.chat(
            "tiny-q4", QUESTION, tools=tools, tool_choice="get_weather", max_tokens=120, seed=1
        )
        conversation = [*QUESTION, *tool_round(answer, {"temperature": 21})]
        final = client.chat("tiny-q4", conversation, tools=tools, tool_choice="none", max_tokens=4)
        question_alone = client.count_tokens("tiny-q4", messages=QUESTION).prompt_tokens
    assert final.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert final.usage.prompt_tokens > question_alone + 30


def test_a_tool_whose_schema_has_definitions_is_held_to_them(client: Client) -> None:
    # Pydantic writes nested models as $defs with $ref: the call's schema must keep
    # resolving them once the parameters sit inside {"name", "arguments"}.
    unit = {"type": "string", "enum": ["celsius", "fahrenheit"]}
    place = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    parameters = {
        "$defs": {"Place": place, "Unit": unit},
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}, "unit": {"$ref": "#/$defs/Unit"}},
        "required": ["place", "unit"],
        "additionalProperties": False,
    }
    tool = Tool("forecast", "Weather forecast", parameters)
    answer = client.chat(
        MODEL, QUESTION, tools=[tool], tool_choice="forecast", max_tokens=150, seed=2
    )
    [call] = check_calls(answer.tool_calls, [tool])
    assert call.parsed_arguments()["place"]["city"] in ("Paris", "Rome")
