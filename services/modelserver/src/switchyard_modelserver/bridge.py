"""A bridge from an engine thread to asyncio that coalesces ready tokens.

Engines such as llama.cpp generate in a worker thread. The thread pushes
events; the asyncio side takes every event that is ready at once and merges
consecutive deltas into one. The first token is never delayed, and when the
consumer keeps up each token travels alone; when it falls behind, one message
carries many tokens, which keeps the per-message cost of gRPC off the hot path.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator

from switchyard_modelserver.domain import Delta, GenerationEvent


class EngineThreadBridge:
    """Carries generation events from one worker thread to one asyncio consumer."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[GenerationEvent | BaseException] = collections.deque()
        self._ready = asyncio.Event()
        self.cancelled = threading.Event()
        """Set by the consumer side; the worker checks it before each token."""

    def push(self, item: GenerationEvent | BaseException) -> None:
        """Called from the worker thread."""
        try:
            self._loop.call_soon_threadsafe(self._append, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def _append(self, item: GenerationEvent | BaseException) -> None:
        self._items.append(item)
        self._ready.set()

    async def events(self) -> AsyncIterator[GenerationEvent]:
        """Yields events until (and including) the Finish; re-raises a worker's exception."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            pending: Delta | None = None
            while self._items:
                item = self._items.popleft()
                if isinstance(item, Delta):
                    if pending is None:
                        pending = Delta(item.text, item.tokens, list(item.token_ids))
                    else:
                        pending.text += item.text
                        pending.tokens += item.tokens
                        pending.token_ids += item.token_ids
                    continue
                if pending is not None:
                    yield pending
                    pending = None
                if isinstance(item, BaseException):
                    raise item
                yield item
                return
            if pending is not None:
                yield pending
