"""Chains, usage events and batches against real servers, and the runnable SDK examples.

The scripted backend's `echo` model answers with its input, so what each chain
step received is visible in its output; llama.cpp's tiny model is the real engine.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import start_modelserver
from processes import ServerProcess

from switchyard import (
    AsyncClient,
    ChatPromptTemplate,
    Client,
    FinishReason,
    InvalidArgumentError,
    LLMChain,
    MissingVariablesError,
    NotFoundError,
    RateLimitError,
    SequentialChain,
    UnavailableError,
    UsageEvent,
    UsageMeter,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "clients" / "python" / "examples"


def two_step_chain(client: Client | AsyncClient) -> SequentialChain:
    outline = LLMChain(client, "echo", "Outline: {topic}", output_key="outline")
    talk = LLMChain(
        client,
        "echo",
        ChatPromptTemplate([("system", "Be {tone}."), ("user", "Write: {outline}")]),
        output_key="talk",
    )
    return SequentialChain([outline, talk])


def test_sequential_chain_feeds_each_output_into_later_steps(router: ServerProcess) -> None:
    with Client(router.address) as client:
        chain = two_step_chain(client)
        assert chain.input_variables == ("topic", "tone")
        assert chain.output_keys == ("outline", "talk")
        values = chain.invoke(topic="gRPC", tone="brief")
    assert values == {
        "topic": "gRPC",
        "tone": "brief",
        "outline": "Outline: gRPC",
        "talk": "Be brief.\nWrite: Outline: gRPC",  # echo joins the chat turns
    }


async def test_async_chain_streams_its_last_step(router: ServerProcess) -> None:
    meter = UsageMeter()
    async with AsyncClient(router.address, on_usage=meter) as client:
        chain = two_step_chain(client)
        chunks = [chunk async for chunk in chain.astream({"topic": "gRPC"}, tone="brief")]
    assert "".join(chunk.text for chunk in chunks) == "Be brief.\nWrite: Outline: gRPC"
    assert len(chunks) >= 2
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert [event.method for event in meter.events] == ["generate", "stream"]


def test_blocking_chain_streams_its_last_step_and_cancels_it_when_left(
    router: ServerProcess,
) -> None:
    meter = UsageMeter()
    with Client(router.address, on_usage=meter) as client:
        chain = two_step_chain(client)
        chunks = list(chain.stream(topic="gRPC", tone="brief"))
        assert "".join(chunk.text for chunk in chunks) == "Be brief.\nWrite: Outline: gRPC"
        assert chunks[-1].finish_reason is FinishReason.STOP
        slow = SequentialChain([LLMChain(client, "drip", "{words}", output_key="out")])
        for _ in slow.stream(words="a b c d e f g h"):
            break  # leaving the loop drops the generator, which closes the stream
    assert [event.method for event in meter.events] == ["generate", "stream", "stream"]
    assert meter.events[-1].finish_reason is FinishReason.CANCELLED


async def test_async_chain_invokes_a_real_model(router: ServerProcess) -> None:
    async with AsyncClient(router.address) as client:
        step = LLMChain(
            client, "tiny", "Say {word}", output_key="said", max_tokens=6, temperature=0
        )
        values = await step.ainvoke(word="hello")
        expected = await client.generate("tiny", "Say hello", max_tokens=6, temperature=0)
    assert values["said"] == expected.text != ""


def test_a_missing_chain_variable_fails_before_any_call(router: ServerProcess) -> None:
    meter = UsageMeter()
    with Client(router.address, on_usage=meter) as client:
        chain = two_step_chain(client)
        with pytest.raises(MissingVariablesError, match="missing variable 'tone'"):
            chain.invoke(topic="gRPC")
        with pytest.raises(MissingVariablesError):
            chain.stream(topic="gRPC")
    assert meter.calls == 0


async def test_a_chain_tells_which_methods_fit_its_client(router: ServerProcess) -> None:
    with Client(router.address) as client:
        blocking = two_step_chain(client)
        with pytest.raises(TypeError, match=r"blocking Client: use invoke\(\)"):
            await blocking.ainvoke(topic="a", tone="b")
        with pytest.raises(TypeError, match=r"blocking Client: use invoke\(\)"):
            [chunk async for chunk in blocking.astream(topic="a", tone="b")]
    async with AsyncClient(router.address) as async_client:
        with pytest.raises(TypeError, match=r"AsyncClient: use ainvoke\(\)"):
            two_step_chain(async_client).invoke(topic="a", tone="b")


def test_usage_events_report_tokens_and_latency_per_call(router: ServerProcess) -> None:
    events: list[UsageEvent] = []
    with Client(router.address, on_usage=events.append) as client:
        completion = client.generate("tiny", "Hello", max_tokens=5, temperature=0)
        with client.stream("renamed-tiny", "Hello", max_tokens=5, temperature=0) as stream:
            last = list(stream)[-1]
        with pytest.raises(NotFoundError):
            client.chat("no-such-model", [{"role": "user", "content": "hi"}])
    generate, streamed, failed = events
    assert (generate.method, generate.model, generate.served_model) == ("generate", "tiny", "tiny")
    assert generate.backend == "llamacpp"
    assert generate.usage == completion.usage
    assert generate.completion_tokens == 5
    assert generate.latency > 0 and generate.attempts == 1
    assert generate.finish_reason is FinishReason.LENGTH
    assert (streamed.method, streamed.model, streamed.served_model) == (
        "stream",
        "renamed-tiny",
        "tiny",
    )
    assert streamed.usage == last.usage and streamed.completion_tokens == 5
    assert streamed.time_to_first_token is not None
    assert 0 < streamed.time_to_first_token <= streamed.latency
    assert (failed.method, failed.ok, failed.total_tokens) == ("chat", False, 0)
    assert isinstance(failed.error, NotFoundError)


def test_a_stream_closed_early_reports_a_cancelled_call(router: ServerProcess) -> None:
    events: list[UsageEvent] = []
    with (
        Client(router.address, on_usage=events.append) as client,
        client.stream("drip", "ignored") as stream,
    ):
        first = next(stream)
    assert first.text
    [event] = events
    assert event.finish_reason is FinishReason.CANCELLED
    assert event.time_to_first_token is not None


def test_a_stream_dropped_unread_still_reports_its_call(router: ServerProcess) -> None:
    events: list[UsageEvent] = []
    with Client(router.address, on_usage=events.append) as client:
        stream = client.stream("drip", "a b c d e f g h")
        assert next(stream).text
        del stream  # neither read to the end nor closed
        gc.collect()
    assert [(event.method, event.finish_reason) for event in events] == [
        ("stream", FinishReason.CANCELLED)
    ]


def test_usage_events_count_retries(scripted_server: ServerProcess) -> None:
    events: list[UsageEvent] = []
    # `flaky` fails with UNAVAILABLE after two tokens: each retry fails again.
    with (
        Client(scripted_server.address, max_retries=2, on_usage=events.append) as client,
        pytest.raises(UnavailableError),
    ):
        client.generate("flaky", "hi")
    [event] = events
    assert event.attempts == 3
    assert isinstance(event.error, UnavailableError)


def test_usage_meter_sums_per_model(router: ServerProcess) -> None:
    meter = UsageMeter()
    with Client(router.address, on_usage=meter) as client:
        answers = [client.generate(model, "one two three") for model in ("echo", "echo", "canned")]
    by_model = meter.by_model()
    assert by_model["echo"].completion_tokens == 6 and by_model["echo"].prompt_tokens == 6
    assert by_model["canned"].completion_tokens == answers[2].usage.completion_tokens
    assert meter.total_tokens == sum(answer.usage.total_tokens for answer in answers)


@pytest.fixture(scope="module")
def two_slot_server(workdir: Path) -> Iterator[ServerProcess]:
    """A model that runs two generations at once and queues none: a third is refused."""
    server = start_modelserver(
        workdir,
        "two-slot-modelserver",
        {
            "max_queue_per_model": 0,
            "backend": {
                "kind": "scripted",
                "models": [
                    {"id": "pair", "token_delay_ms": 50, "concurrency": 2},
                ],
            },
        },
    )
    yield server
    server.stop()


def test_generate_batch_keeps_input_order(router: ServerProcess) -> None:
    prompts = [f"item {n}" for n in range(10)]
    with Client(router.address) as client:
        results = client.generate_batch(
            "echo", [*prompts, [{"role": "user", "content": "a chat"}]], max_concurrency=3
        )
    assert [r.text for r in results] == [*prompts, "a chat"]


def test_generate_batch_never_exceeds_its_concurrency(two_slot_server: ServerProcess) -> None:
    prompts = [f"w{n} x y z" for n in range(6)]
    with Client(two_slot_server.address, max_retries=0) as client:
        # Two at a time fit the server's two slots: every call succeeds.
        bounded = client.generate_batch("pair", prompts, max_concurrency=2)
        assert [r.text for r in bounded] == prompts
        # Six at once do not: the server refuses the calls past its two slots.
        unbounded = client.generate_batch(
            "pair", prompts, max_concurrency=6, return_exceptions=True
        )
    assert any(isinstance(r, RateLimitError) for r in unbounded)


async def test_async_generate_batch_never_exceeds_its_concurrency(
    two_slot_server: ServerProcess,
) -> None:
    prompts = [f"w{n} x y z" for n in range(6)]
    async with AsyncClient(two_slot_server.address, max_retries=0) as client:
        bounded = await client.generate_batch("pair", prompts, max_concurrency=2)
        assert [r.text for r in bounded] == prompts
        with pytest.raises(RateLimitError):
            await client.generate_batch("pair", prompts, max_concurrency=6)


def test_generate_batch_raises_the_first_error_and_starts_no_more_calls(
    router: ServerProcess,
) -> None:
    meter = UsageMeter()
    items = ["fine", "", *(f"later {n}" for n in range(30))]  # "" is no input
    with Client(router.address, on_usage=meter) as client:
        with pytest.raises(InvalidArgumentError):
            client.generate_batch("echo", items, max_concurrency=2)
        # The client is still usable afterwards, with its full concurrency.
        again = client.generate_batch("echo", ["a", "b", "c"], max_concurrency=2)
    assert [r.text for r in again] == ["a", "b", "c"]
    failed_batch = meter.calls - 3
    # The failure and what was already in flight; the calls queued behind were dropped.
    assert meter.errors == 1
    assert 2 <= failed_batch < len(items) // 2


async def test_async_generate_batch_puts_errors_in_place(router: ServerProcess) -> None:
    meter = UsageMeter()
    async with AsyncClient(router.address, on_usage=meter) as client:
        results = await client.generate_batch(
            "echo", ["fine", "", "also fine"], return_exceptions=True
        )
    assert [getattr(r, "text", None) for r in results] == ["fine", None, "also fine"]
    assert isinstance(results[1], InvalidArgumentError)  # an empty prompt is no input
    assert (meter.calls, meter.errors) == (3, 1)


def run_example(script: Path, router: ServerProcess) -> str:
    env = {**os.environ, "SWITCHYARD_TARGET": router.address, "SWITCHYARD_MODEL": "echo"}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_chains_example_runs(router: ServerProcess) -> None:
    output = run_example(EXAMPLES / "chains.py", router)
    assert "needs: country, style\n" in output
    assert "fact: The capital of France is\n" in output
    assert "tour: You are a cheerful tour guide.\nTell me about France: The capital of" in output
    assert (
        "streamed: You are a calm tour guide.\nTell me about Italy: The capital of Ital" in output
    )
    assert "error: SequentialChain(steps=['fact', 'tour']) is missing variable 'style'" in output


def test_usage_and_batch_example_runs(router: ServerProcess) -> None:
    output = run_example(EXAMPLES / "usage_and_batch.py", router)
    for n in range(1, 7):
        assert f"'Count to {n}:' -> 'Count to {n}:'\n" in output
    assert output.count("[generate echo] 3+3 tokens") == 6
    assert "[stream echo] 4+4 tokens" in output
    assert "[generate no-such-model] 0+0 tokens" in output and "(NotFoundError)" in output
    assert "total: 8 calls, 1 failed, 22 prompt + 22 completion tokens" in output


def test_readme_sdk_workflow_example_runs(router: ServerProcess) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("#### Templates, chains, usage events and batches") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "README lost its SDK workflow example"
    code = block.group(1).replace("localhost:50051", router.address)
    code = code.replace('MODEL = "smollm2-135m-instruct"', 'MODEL = "echo"')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "The capital of France is You are a cheerful tour guide."
    assert "Tell me about Italy: The capital of Italy is" in result.stdout
    assert "['1, 2, 3,', 'a, b, c,']" in result.stdout
    assert lines[-1].startswith("6 ")  # calls metered: 2 steps invoked, 2 streamed, a batch of 2
