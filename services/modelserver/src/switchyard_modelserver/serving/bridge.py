"""A bridge from an engine thread to asyncio.

Engines such as llama.cpp generate in a worker thread. The thread pushes
events without blocking; the asyncio side wakes once for everything that is
ready and yields it in order.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncGenerator

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

    async def events(self) -> AsyncGenerator[GenerationEvent, None]:
        """Yields events until (and including) the Finish; re-raises a worker's exception.

        Merging deltas into fewer messages is the servicer's job (``coalescing``).
        """
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._items:
                item = self._items.popleft()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if not isinstance(item, Delta):
                    return
