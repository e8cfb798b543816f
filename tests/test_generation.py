"""Generation through the router and directly on a llama.cpp model server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from processes import ServerProcess

import switchyard
from switchyard import Client, FinishReason


@pytest.fixture(params=["router", "direct"])
def client(
    request: pytest.FixtureRequest, router: ServerProcess, llama_server: ServerProcess
) -> Iterator[Client]:
    target = router if request.param == "router" else llama_server
    with Client(target.address, timeout=30) as c:
        yield c


def test_generate_returns_exactly_max_tokens_when_the_model_does_not_stop(client: Client) -> None:
    result = client.generate("tiny", "hello world", max_tokens=24, temperature=0.0)
    assert result.finish_reason is FinishReason.LENGTH
    assert result.usage.completion_tokens == 24
    assert result.usage.prompt_tokens > 0
    assert result.text


def test_max_tokens_is_a_hard_cap_even_where_llama_cpp_python_overshoots(client: Client) -> None:
    # llama-cpp-python's create_completion can return more than max_tokens (it
    # skips its check while bytes form an incomplete UTF-8 character; seen: 68
    # for 64 on this model). The tiny models emit many byte tokens.
    for max_tokens in (1, 7, 64):
        result = client.generate("tiny-slow", "hello world", max_tokens=max_tokens, temperature=0.0)
        assert result.usage.completion_tokens == max_tokens
        assert result.finish_reason is FinishReason.LENGTH


def test_greedy_generation_is_deterministic(client: Client) -> None:
    first = client.generate("tiny", "the capital of france is", max_tokens=32, temperature=0.0)
    second = client.generate("tiny", "the capital of france is", max_tokens=32, temperature=0.0)
    assert first.text == second.text


def test_stream_concatenates_to_the_unary_text(client: Client) -> None:
    unary = client.generate("tiny", "hello world", max_tokens=32, temperature=0.0)
    chunks = list(client.stream("tiny", "hello world", max_tokens=32, temperature=0.0))
    assert "".join(c.text for c in chunks) == unary.text
    assert all(c.finish_reason is None for c in chunks[:-1])
    final = chunks[-1]
    assert final.finish_reason is FinishReason.LENGTH
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (
        unary.usage.prompt_tokens,
        unary.usage.completion_tokens,
    )
    # The same prompt again: the engine reuses what it computed (all but the last
    # token, evaluated again for fresh logits).
    assert final.usage.cached_prompt_tokens == unary.usage.prompt_tokens - 1
    assert (final.model, final.backend) == ("tiny", "llamacpp")
    assert (
        final.timings is not None and 0 < final.timings.time_to_first_token <= final.timings.total
    )


def test_stream_arrives_in_several_messages(client: Client) -> None:
    chunks = list(client.stream("tiny-slow", "hello world", max_tokens=48, temperature=0.0))
    assert len([c for c in chunks if c.text]) > 1


def test_chat_messages_use_the_chat_template(client: Client) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    chat = client.chat("tiny", messages, max_tokens=8, temperature=0.0)
    plain = client.generate("tiny", "hello", max_tokens=8, temperature=0.0)
    assert chat.usage.completion_tokens == 8
    # The template wraps the turns in ChatML markers, so the prompt is longer.
    assert chat.usage.prompt_tokens > plain.usage.prompt_tokens + 10


def test_stream_chat(client: Client) -> None:
    chunks = list(
        client.stream(
            "tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0.0
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stop_sequence_ends_generation_before_it(client: Client) -> None:
    full = client.generate("tiny", "hello world", max_tokens=40, temperature=0.0).text
    stop = full[10:13]
    assert len(stop) == 3 and stop in full
    result = client.generate("tiny", "hello world", max_tokens=40, stop=[stop], temperature=0.0)
    assert result.finish_reason is FinishReason.STOP_SEQUENCE
    assert result.stop_sequence == stop
    assert result.text == full[: full.index(stop)]
    streamed = "".join(
        c.text
        for c in client.stream("tiny", "hello world", max_tokens=40, stop=[stop], temperature=0.0)
    )
    assert streamed == result.text


def test_seed_repeats_sampled_output(client: Client) -> None:
    first = client.generate("tiny", "hello", temperature=1.0, seed=1234, max_tokens=24)
    second = client.generate("tiny", "hello", temperature=1.0, seed=1234, max_tokens=24)
    assert first.text == second.text


def test_alias_resolves_to_the_model(llama_server: ServerProcess) -> None:
    with Client(llama_server.address) as client:
        result = client.generate("tiny-alias", "hello", max_tokens=4, temperature=0.0)
    assert result.model == "tiny"


def test_router_rewrites_the_model_name_for_its_target(router: ServerProcess) -> None:
    with Client(router.address) as client:
        renamed = client.generate("renamed-tiny", "hello", max_tokens=8, temperature=0.0)
        direct = client.generate("tiny", "hello", max_tokens=8, temperature=0.0)
    assert renamed.model == "tiny"
    assert renamed.text == direct.text


def test_quantized_q4_model_generates(client: Client) -> None:
    # Regression test for the AMX crash of native llama.cpp builds on quantized models.
    result = client.generate("tiny-q4", "hello", max_tokens=16, temperature=0.0)
    assert result.usage.completion_tokens == 16


def test_list_models_reports_ready_models(client: Client) -> None:
    models = {m.id: m for m in client.list_models()}
    tiny = models["tiny"]
    assert tiny.ready
    assert tiny.backend == "llamacpp"
    assert tiny.context_length == 1024
    assert {"completion", "chat", "streaming"} <= set(tiny.capabilities)
    assert tiny.healthy_replicas == 1


def test_router_lists_every_route(router: ServerProcess) -> None:
    with Client(router.address) as client:
        models = {m.id: m for m in client.list_models()}
    assert {"tiny", "tiny-slow", "tiny-q4", "renamed-tiny", "echo", "canned"} <= set(models)
    assert models["renamed-tiny"].ready and models["renamed-tiny"].context_length == 1024
    assert models["canned"].backend == "scripted"


async def test_async_client_matches_the_sync_client(router: ServerProcess) -> None:
    with Client(router.address) as sync_client:
        expected = sync_client.generate("tiny", "hello world", max_tokens=16, temperature=0.0)
    async with switchyard.AsyncClient(router.address) as client:
        result = await client.generate("tiny", "hello world", max_tokens=16, temperature=0.0)
        streamed = [
            c async for c in client.stream("tiny", "hello world", max_tokens=16, temperature=0.0)
        ]
        models = await client.list_models()
    assert result.text == expected.text
    assert "".join(c.text for c in streamed) == expected.text
    assert "tiny" in {m.id for m in models}
