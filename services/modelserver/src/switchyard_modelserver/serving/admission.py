"""Admission control: a bounded queue per model.

Each model runs at most ``concurrency`` generations at once; up to
``max_queue`` more wait. Past that the server answers RESOURCE_EXHAUSTED with
RetryInfo, so the router (or the client) goes elsewhere instead of piling on.
A request cancelled while it waits leaves the queue at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from switchyard_common.status import StatusError
from switchyard_modelserver.telemetry import metrics


class ModelGate:
    """The bounded queue in front of one model."""

    def __init__(self, model_id: str, concurrency: int, max_queue: int, retry_after: float) -> None:
        self.model_id = model_id
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._max_queue = max_queue
        self._retry_after = retry_after
        self.waiting = 0
        self.running = 0

    def refuse_if_full(self) -> None:
        """RESOURCE_EXHAUSTED (QUEUE_FULL, with RetryInfo) if a request would not
        even get a place in the queue now."""
        if self._slots.locked() and self.waiting >= self._max_queue:
            raise StatusError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {self.model_id} is busy: {self.running} running and {self.waiting} "
                f"queued (max_queue_per_model={self._max_queue}); retry later or elsewhere",
                reason="QUEUE_FULL",
                metadata={"model": self.model_id},
                retry_after=self._retry_after,
            )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Holds one generation slot for the duration of the block."""
        self.refuse_if_full()
        self.waiting += 1
        metrics.QUEUE_DEPTH.labels(self.model_id).inc()
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.QUEUE_DEPTH.labels(self.model_id).dec()
        self.running += 1
        metrics.IN_FLIGHT.labels(self.model_id).inc()
        try:
            yield
        finally:
            self.running -= 1
            metrics.IN_FLIGHT.labels(self.model_id).dec()
            self._slots.release()
