"""Coalescing of streamed deltas: fewer gRPC messages, same text, same first token.

Each gRPC message costs a relaying router tens of microseconds of CPU, whatever
it carries (docs/architecture.md, performance facts), so one message per token would make
the router cost as much CPU as the engine. The backend's generator runs in its
own task and fills a buffer; the writer sends the first token at once, then at
most one message per ``window`` carrying every delta produced meanwhile. The
end of the generation is sent as soon as it arrives. With ``window`` 0, only
deltas that are ready together are merged (nothing waits on a timer).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator

from switchyard_modelserver.domain import Delta, GenerationEvent, ToolCallDelta


async def coalesced(
    events: AsyncGenerator[GenerationEvent, None], window: float = 0.0
) -> AsyncGenerator[GenerationEvent, None]:
    """Yields ``events`` with the deltas of each ``window`` (seconds) merged."""
    buffer: collections.deque[GenerationEvent] = collections.deque()
    ready = asyncio.Event()
    failure: list[BaseException] = []
    finished = False
    loop = asyncio.get_running_loop()

    async def produce() -> None:
        nonlocal finished
        first = True
        try:
            async for event in events:
                buffer.append(event)
                if not isinstance(event, Delta):
                    finished = True  # the Finish: nothing to wait for any more
                ready.set()
                if first:
                    first = False
                    await asyncio.sleep(0)  # let the writer send the first token alone
        except Exception as error:  # handed to the writer, which raises it in order
            failure.append(error)
        finally:
            finished = True
            ready.set()
            await events.aclose()

    producer = loop.create_task(produce())
    last_sent: float | None = None
    try:
        while True:
            await ready.wait()
            while window and last_sent is not None and not finished:
                remaining = last_sent + window - loop.time()
                if remaining <= 0:
                    break
                ready.clear()
                try:
                    await asyncio.wait_for(ready.wait(), remaining)
                except TimeoutError:
                    break
            ready.clear()
            pending: Delta | None = None
            while buffer:
                event = buffer.popleft()
                if isinstance(event, Delta):
                    if pending is None:
                        pending = Delta(
                            event.text,
                            event.tokens,
                            list(event.token_ids),
                            list(event.logprobs),
                            list(event.tool_calls),
                        )
                    else:
                        pending.text += event.text
                        pending.tokens += event.tokens
                        pending.token_ids += event.token_ids
                        pending.logprobs += event.logprobs
                        merge_tool_calls(pending.tool_calls, event.tool_calls)
                    continue
                if pending is not None:
                    yield pending
                    pending = None
                yield event
            if pending is not None:
                yield pending
                last_sent = loop.time()
            if finished and not buffer:
                if failure:
                    raise failure[0]
                return
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)


def merge_tool_calls(into: list[ToolCallDelta], pieces: list[ToolCallDelta]) -> None:
    """Appends ``pieces``, joining an argument fragment onto the previous piece of the
    same call (the name still comes first, in its own piece's place)."""
    for piece in pieces:
        last = into[-1] if into else None
        if last is not None and last.index == piece.index and not piece.id and not piece.name:
            into[-1] = ToolCallDelta(
                last.index, last.id, last.name, last.arguments + piece.arguments
            )
        else:
            into.append(piece)
