"""The llama.cpp model server keeps prompt states beyond the live one: conversations that
interleave on one replica each skip the prefix they computed before, give the same
answers as without the cache, and count the skipped tokens in usage and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fleet import Fleet
from processes import ServerProcess, free_port
from scrape import scrape, value

from switchyard import Client, Completion

SYSTEM = "You answer questions about documents. Keep answers short. " * 4


def llama(fleet: Fleet, models_dir: Path, label: str, **options: Any) -> ServerProcess:
    metrics = free_port()
    server = fleet.modelserver(
        label,
        {
            "metrics_listen": f"127.0.0.1:{metrics}",
            "backend": {
                "kind": "llamacpp",
                "models_dir": str(models_dir),
                "threads": 1,
                "context_length": 1024,
                "models": [{"file": "tiny.gguf"}],
                **options,
            },
        },
    )
    server.metrics_port = metrics  # type: ignore[attr-defined]
    return server


def conversation(name: str, turns: int) -> list[dict[str, str]]:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Document {name}: " + f"{name} facts and figures. " * 6},
    ]
    for turn in range(1, turns):
        messages += [
            {"role": "assistant", "content": f"reply {turn}"},
            {"role": "user", "content": f"question {turn}"},
        ]
    return messages


def interleaved(server: ServerProcess) -> list[Completion]:
    """Two conversations' first turns, then their second turns, on one replica."""
    with Client(server.address, max_retries=0, timeout=60) as client:
        return [
            client.chat("tiny", conversation(name, turns), max_tokens=8, temperature=0)
            for turns, name in ((1, "alpha"), (1, "beta"), (2, "alpha"), (2, "beta"))
        ]


def test_interleaved_conversations_skip_their_prefix_and_answer_the_same(
    fleet: Fleet, models_dir: Path
) -> None:
    cached = llama(fleet, models_dir, "cached")
    uncached = llama(fleet, models_dir, "uncached", prompt_cache_bytes=0)
    with_cache, without = interleaved(cached), interleaved(uncached)
    assert [c.text for c in with_cache] == [c.text for c in without]
    alpha_1, beta_1, alpha_2, beta_2 = with_cache
    # The second turns reuse all of their first turn's prompt, and more (its answer).
    for first, second in ((alpha_1, alpha_2), (beta_1, beta_2)):
        assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens - 1
        assert second.usage.cached_prompt_tokens < second.usage.prompt_tokens
    # Without the cache, a second turn shares only the system prompt with the
    # other conversation, which the live context holds.
    shared_system = beta_1.usage.cached_prompt_tokens
    assert 0 < shared_system < alpha_1.usage.prompt_tokens
    assert [c.usage.cached_prompt_tokens for c in without[2:]] == [shared_system] * 2
    assert without[0].usage.cached_prompt_tokens == 0
    # Usage and metrics agree.
    counted = value(
        scrape(cached.metrics_port),  # type: ignore[attr-defined]
        "switchyard_modelserver_cached_input_tokens_total",
        model="tiny",
    )
    assert counted == sum(c.usage.cached_prompt_tokens for c in with_cache)


def test_a_cache_too_small_for_any_state_keeps_only_the_live_prompt(
    fleet: Fleet, models_dir: Path
) -> None:
    tiny_cache = llama(fleet, models_dir, "tiny-cache", prompt_cache_bytes=1024)
    uncached = llama(fleet, models_dir, "uncached", prompt_cache_bytes=0)
    small, without = interleaved(tiny_cache), interleaved(uncached)
    assert [c.text for c in small] == [c.text for c in without]
    assert [c.usage.cached_prompt_tokens for c in small] == [
        c.usage.cached_prompt_tokens for c in without
    ]


def test_prompt_cache_bytes_must_not_be_negative(fleet: Fleet, models_dir: Path) -> None:
    with pytest.raises(RuntimeError) as caught:
        llama(fleet, models_dir, "negative", prompt_cache_bytes=-1)
    assert "prompt_cache_bytes" in str(caught.value)
