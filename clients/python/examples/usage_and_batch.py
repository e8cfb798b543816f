"""Usage events (tokens and latency per call) and a bounded batch.

    python clients/python/examples/usage_and_batch.py   # against `make run`

SWITCHYARD_TARGET and SWITCHYARD_MODEL pick another server or model.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from switchyard import AsyncClient, NotFoundError, UsageEvent, UsageMeter

TARGET = os.environ.get("SWITCHYARD_TARGET", "localhost:50051")
MODEL = os.environ.get("SWITCHYARD_MODEL", "smollm2-135m-instruct")


def log_call(event: UsageEvent) -> None:
    """A usage callback: one line per call (a meter, a budget or a billing hook)."""
    outcome = event.finish_reason if event.ok else type(event.error).__name__
    print(
        f"  [{event.method} {event.model}] {event.prompt_tokens}+{event.completion_tokens}"
        f" tokens in {event.latency * 1000:.0f} ms ({outcome})"
    )


async def main() -> None:
    meter = UsageMeter()

    def on_usage(event: UsageEvent) -> None:
        log_call(event)
        meter(event)

    async with AsyncClient(TARGET, on_usage=on_usage) as client:
        prompts = [f"Count to {n}:" for n in range(1, 7)]
        print(f"batch of {len(prompts)}, at most 3 at once:")
        answers = await client.generate_batch(
            MODEL, prompts, max_concurrency=3, max_tokens=8, temperature=0
        )
        for prompt, answer in zip(prompts, answers, strict=True):
            print(f"{prompt!r} -> {answer.text!r}")

        print("a stream:")
        async with client.stream(MODEL, "Once upon a time", max_tokens=8) as stream:
            async for _ in stream:
                pass

        print("a failed call:")
        with contextlib.suppress(NotFoundError):  # reported to on_usage all the same
            await client.generate("no-such-model", "Hello")

    print(
        f"total: {meter.calls} calls, {meter.errors} failed,"
        f" {meter.prompt_tokens} prompt + {meter.completion_tokens} completion tokens"
    )
    for model, usage in meter.by_model().items():
        print(f"  {model}: {usage.total_tokens} tokens")


if __name__ == "__main__":
    asyncio.run(main())
