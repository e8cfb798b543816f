"""Generation requests in progress, counted so that a drain knows when they are done."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from switchyard_common.status import StatusError


class InFlight:
    """Counts generation requests in progress; refuses new ones once draining."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Counts the request inside; UNAVAILABLE (retry elsewhere) while draining."""
        if self.draining:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                "model server is shutting down; retry on another replica",
                reason="SHUTTING_DOWN",
            )
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def idle(self) -> None:
        """Returns once no request is in progress."""
        await self._idle.wait()
