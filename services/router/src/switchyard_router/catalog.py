"""ListModels on the router: every route, with the live state of its targets."""

from __future__ import annotations

import asyncio
import logging

import grpc

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router.endpoints import Endpoint
from switchyard_router.routing import RouteTable

log = logging.getLogger("switchyard.router.catalog")

_LIST_MODELS_REQUEST = pb.ListModelsRequest().SerializeToString()


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


async def list_models(table: RouteTable, timeout: float) -> pb.ListModelsResponse:
    """Asks every endpoint once, concurrently, and reports each route."""
    endpoints = [e for cluster in table.clusters.values() for e in cluster.endpoints]
    answers = await asyncio.gather(*(_models_at(e, timeout) for e in endpoints))
    by_endpoint = dict(zip((id(e) for e in endpoints), answers, strict=True))
    models = []
    for name in sorted(table.routes):
        targets = table.routes[name]
        described: pb.Model | None = None
        healthy = total = 0
        for target in targets:
            for endpoint in target.cluster.endpoints:
                total += 1
                found = by_endpoint[id(endpoint)].get(target.model)
                if found is None:
                    continue
                if described is None:
                    described = found
                if found.status == pb.MODEL_STATUS_READY:
                    healthy += 1
        model = pb.Model(id=name, healthy_replicas=healthy, total_replicas=total)
        if described is not None:
            model.backend = described.backend
            model.context_length = described.context_length
            model.capabilities.extend(described.capabilities)
        if healthy:
            model.status = pb.MODEL_STATUS_READY
        elif described is not None and described.status == pb.MODEL_STATUS_LOADING:
            model.status = pb.MODEL_STATUS_LOADING
        else:
            model.status = pb.MODEL_STATUS_UNAVAILABLE
        models.append(model)
    return pb.ListModelsResponse(models=models)
