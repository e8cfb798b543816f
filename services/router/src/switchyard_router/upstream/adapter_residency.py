"""Which LoRA adapters each endpoint holds in memory, for the picker's adapter affinity.

Read from each endpoint's ListModels every ``adapter_refresh_seconds`` (a model
server reports each model's adapters and whether they are loaded), and noted
by the attempt loop whenever an endpoint serves a request with an adapter (it
loaded it to do so). Off the request path: the picker reads plain sets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import grpc

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.upstream.endpoints import Cluster, Endpoint

log = logging.getLogger("switchyard.router.adapters")

_LIST_MODELS_REQUEST = pb.ListModelsRequest().SerializeToString()
_TICK_SECONDS = 0.5


def loaded_adapters(response: pb.ListModelsResponse) -> dict[str, frozenset[str]]:
    """The adapters in memory per model name (its id and each alias)."""
    held: dict[str, frozenset[str]] = {}
    for model in response.models:
        loaded = frozenset(a.name for a in model.adapters if a.loaded)
        for name in (model.id, *model.aliases):
            held[name] = loaded
    return held


async def refresh(endpoint: Endpoint, timeout: float) -> None:
    """Reads the endpoint's ListModels; keeps what was known if it does not answer."""
    try:
        raw = await endpoint.list_models(_LIST_MODELS_REQUEST, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        log.debug("ListModels on %s failed: %s", endpoint.address, error.code().name)
        return
    endpoint.set_adapters(loaded_adapters(pb.ListModelsResponse.FromString(raw)))


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
            calls += [refresh(e, timeout) for e in cluster.endpoints.values() if not e.draining]
        if calls:
            await asyncio.gather(*calls)
