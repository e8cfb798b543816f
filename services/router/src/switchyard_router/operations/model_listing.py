"""ListModels on the router: every route, with the live state of its targets, gathered
from each endpoint's own ListModels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import grpc

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.load_balancing.capabilities import ROUTED
from switchyard_router.request_path.routing import RouteTable
from switchyard_router.upstream.endpoints import Endpoint

log = logging.getLogger("switchyard.router.model_listing")

_LIST_MODELS_REQUEST = pb.ListModelsRequest().SerializeToString()
# What a replica that loads models on demand says of one not in memory yet.
_NOT_IN_MEMORY = frozenset({pb.MODEL_STATUS_UNLOADED, pb.MODEL_STATUS_LOADING})


async def _models_at(endpoint: Endpoint, timeout: float) -> dict[str, pb.Model]:
    try:
        raw = await endpoint.list_models(_LIST_MODELS_REQUEST, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        log.debug("ListModels on %s failed: %s", endpoint.address, error.code().name)
        return {}
    models: dict[str, pb.Model] = {}
    for model in pb.ListModelsResponse.FromString(raw).models:
        models[model.id] = model
        for alias in model.aliases:
            models.setdefault(alias, model)
    return models


def route_capabilities(described: Sequence[Sequence[int]]) -> list[int]:
    """What a route can do, from what each of its replicas that answered can do: a
    capability the picker routes by (``capabilities.ROUTED``: tools, strict tools, JSON
    output, ...) when one of them has it, as a request that needs it goes there; any
    other (CountTokens, adapters, ...) only when all have it, as a request may land on
    any target, fallbacks included."""
    if not described:
        return []
    every = set(described[0]).intersection(*described[1:])
    some = set().union(*described)
    return sorted(every | {c for c in some if (1 << c) & ROUTED})


async def list_models(
    table: RouteTable, timeout: float, allowed: frozenset[str] | None = None
) -> pb.ListModelsResponse:
    """Describes every route (or only the ``allowed`` ones): what its endpoints say,
    and how many are healthy now."""
    names = sorted(table.routes if allowed is None else allowed & table.routes.keys())
    endpoints = {
        id(e): e
        for route in (table.routes[name] for name in names)
        for target in route.targets
        for e in target.endpoints.values()
    }
    reachable = {k: e for k, e in endpoints.items() if e.state().value != "unreachable"}
    answers = await asyncio.gather(*(_models_at(e, timeout) for e in reachable.values()))
    described_by = dict(zip(reachable, answers, strict=True))
    models = []
    for name in names:
        described: pb.Model | None = None
        # What each replica that answered can do, those serving it first.
        capabilities: list[Sequence[int]] = []
        capabilities_elsewhere: list[Sequence[int]] = []
        # The shortest context: the picker does not route by prompt length, so a
        # prompt longer than it may land where it is refused.
        context_length = 0
        loading = loaded = False
        healthy = total = 0
        adapters: dict[str, bool] = {}  # name -> loaded on some replica
        for target in table.routes[name].targets:
            for endpoint in target.endpoints.values():
                total += 1
                serving = endpoint.serves(target.model)
                healthy += serving
                found = described_by.get(id(endpoint), {}).get(target.model)
                # A replica that loads models on demand serves one it has not loaded
                # (or is loading) too: loaded means in memory on a serving replica.
                loaded = loaded or (
                    serving and (found is None or found.status not in _NOT_IN_MEMORY)
                )
                if found is not None:
                    described = described or found
                    (capabilities if serving else capabilities_elsewhere).append(found.capabilities)
                    length = found.context_length  # 0: not said
                    if length and (not context_length or length < context_length):
                        context_length = length
                    loading = loading or found.status == pb.MODEL_STATUS_LOADING
                    for adapter in found.adapters:
                        adapters[adapter.name] = adapters.get(adapter.name, False) or adapter.loaded
        model = pb.Model(id=name, healthy_replicas=healthy, total_replicas=total)
        if described is not None:
            model.backend = described.backend
            model.context_length = context_length
            # By the replicas that serve it now (requests go there), or if none does,
            # by every replica that answered.
            listed = route_capabilities(capabilities or capabilities_elsewhere)
            model.capabilities.extend(cast(list[pb.Capability], listed))
            if described.HasField("defaults"):
                model.defaults.CopyFrom(described.defaults)
            model.memory_bytes = described.memory_bytes
        model.adapters.extend(pb.Adapter(name=a, loaded=adapters[a]) for a in sorted(adapters))
        if loaded:
            model.status = pb.MODEL_STATUS_READY
        elif loading:
            model.status = pb.MODEL_STATUS_LOADING
        elif healthy:  # served, but its first request waits for a load
            model.status = pb.MODEL_STATUS_UNLOADED
        else:
            model.status = pb.MODEL_STATUS_UNAVAILABLE
        models.append(model)
    return pb.ListModelsResponse(models=models)
