"""The pause between tries at a lost model server's streams (health watch, load
reports): the cluster's ``reconnect_backoff``, as gRPC paces its connection attempts."""

from __future__ import annotations

import asyncio
import random

from switchyard_router.config import ReconnectBackoffConfig

MULTIPLIER = 1.6  # as gRPC's connection back-off


class Backoff:
    """From ``initial_seconds``, times 1.6 after each failed try, up to ``max_seconds``,
    each pause spread by +-``jitter``; :meth:`reset` once a try got through."""

    __slots__ = ("_config", "_pause")

    def __init__(self, config: ReconnectBackoffConfig) -> None:
        self._config = config
        self._pause = config.initial_seconds

    def reset(self) -> None:
        """A try got through: the next failure waits the initial pause again."""
        self._pause = self._config.initial_seconds

    async def wait(self) -> None:
        """Waits the next pause, then lengthens the one after."""
        jitter = self._config.jitter
        await asyncio.sleep(self._pause * random.uniform(1 - jitter, 1 + jitter))
        self._pause = min(self._pause * MULTIPLIER, self._config.max_seconds)
