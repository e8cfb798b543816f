"""Which LoRA adapters each endpoint holds in memory, for the picker's adapter affinity,
and what its models can do, for routing by capability.

Read from each endpoint's ListModels every ``adapter_refresh_seconds`` (a model
server reports each model's adapters and whether they are loaded, and its
capabilities), and noted by the attempt loop whenever an endpoint serves a request
with an adapter (it loaded it to do so). Capabilities are also read once each time
an endpoint says SERVING (``health``), so they hold with the refresh off. Off the
request path: the picker reads plain sets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from switchyard_router.upstream.endpoints import Cluster

_TICK_SECONDS = 0.5


async def follow(clusters: Callable[[], Mapping[str, Cluster]], timeout: float) -> None:
    """Refreshes every endpoint of every cluster at its cluster's interval, forever."""
    due: dict[str, float] = {}
    while True:
        await asyncio.sleep(_TICK_SECONDS)
        now = time.monotonic()
        calls = []
        for name, cluster in list(clusters().items()):
            interval = cluster.config.adapter_refresh_seconds
            if interval <= 0 or now < due.get(name, 0.0):
                continue
            due[name] = now + interval
            calls += [e.read_models(timeout) for e in cluster.endpoints.values() if not e.draining]
        if calls:
            await asyncio.gather(*calls)
