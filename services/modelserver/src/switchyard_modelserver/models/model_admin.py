"""ModelAdminService on a model server: load and unload models and LoRA adapters.

For operators (``switchyard models load ...``, grpcurl), usually through a
router, which checks the caller's admin permission and forwards here (the
request's ``endpoint`` names this server there; here it must be empty). A model
server has no keys of its own: like its LLMService, keep it on a private
network or behind mutual TLS.

Backends whose models load on demand (a residency: llamacpp) load and unload
models; the others keep every model loaded from start to stop and answer
UNIMPLEMENTED to LoadModel and UnloadModel. Adapters are the backend's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2

from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_common.status import FieldViolation, StatusError, abort, invalid_argument
from switchyard_modelserver.backends.base import Backend
from switchyard_modelserver.domain import ModelState
from switchyard_modelserver.models.adapters import check_name
from switchyard_modelserver.models.catalog import ModelCatalog
from switchyard_modelserver.serving.admission import ModelGate
from switchyard_modelserver.serving.servicer import STATUS

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
_IN_MEMORY = (ModelState.READY, ModelState.LOADING, ModelState.DRAINING)


@asynccontextmanager
async def _ends_with_status(context: Context) -> AsyncIterator[None]:
    """A StatusError raised inside ends the call with its status and details."""
    try:
        yield
    except StatusError as error:
        await abort(context, error)


def _not_forwarded(endpoint: str, field: str = "endpoint") -> None:
    if endpoint:
        raise invalid_argument(
            FieldViolation(field, "only a router forwards to an endpoint; leave it empty here")
        )


class ModelAdmin(admin_grpc.ModelAdminServiceServicer):
    """Serves ModelAdminService for one backend."""

    def __init__(
        self, backend: Backend, catalog: ModelCatalog, gates: dict[str, ModelGate]
    ) -> None:
        self._backend = backend
        self._catalog = catalog
        self._gates = gates

    async def LoadModel(  # noqa: N802 - gRPC method name
        self, request: admin_pb.LoadModelRequest, context: Context
    ) -> admin_pb.LoadModelResponse:
        async with _ends_with_status(context):
            _not_forwarded(request.endpoint)
            model_id = self._model_id(request.model)
            await self._residency_for("LoadModel").load(model_id)
            return admin_pb.LoadModelResponse(model=await self._describe(model_id))
        raise AssertionError("unreachable")

    async def UnloadModel(  # noqa: N802 - gRPC method name
        self, request: admin_pb.UnloadModelRequest, context: Context
    ) -> admin_pb.UnloadModelResponse:
        async with _ends_with_status(context):
            _not_forwarded(request.endpoint)
            model_id = self._model_id(request.model)
            await self._residency_for("UnloadModel").unload(model_id)
            return admin_pb.UnloadModelResponse(model=await self._describe(model_id))
        raise AssertionError("unreachable")

    async def ListLoaded(  # noqa: N802 - gRPC method name
        self, request: admin_pb.ListLoadedRequest, context: Context
    ) -> admin_pb.ListLoadedResponse:
        async with _ends_with_status(context):
            _not_forwarded(request.endpoint)
            response = admin_pb.ListLoadedResponse()
            for entry in self._catalog.entries():
                if entry.state in _IN_MEMORY:
                    response.models.append(await self._describe(entry.card.id))
            residency = self._backend.residency
            if residency is not None:
                use = residency.budget()
                response.budgets.append(
                    admin_pb.MemoryBudget(
                        budget_bytes=use.memory_budget_bytes or 0,
                        used_bytes=use.used_bytes,
                        max_loaded_models=use.max_loaded_models or 0,
                        loaded_models=use.loaded_models,
                    )
                )
            return response
        raise AssertionError("unreachable")

    async def LoadAdapter(  # noqa: N802 - gRPC method name
        self, request: admin_pb.LoadAdapterRequest, context: Context
    ) -> admin_pb.LoadAdapterResponse:
        async with _ends_with_status(context):
            _not_forwarded(request.endpoint)
            model_id = self._model_id(request.model)
            check_name(request.adapter)
            await self._backend.load_adapter(model_id, request.adapter, request.path)
            return admin_pb.LoadAdapterResponse(model=await self._describe(model_id))
        raise AssertionError("unreachable")

    async def UnloadAdapter(  # noqa: N802 - gRPC method name
        self, request: admin_pb.UnloadAdapterRequest, context: Context
    ) -> admin_pb.UnloadAdapterResponse:
        async with _ends_with_status(context):
            _not_forwarded(request.endpoint)
            model_id = self._model_id(request.model)
            check_name(request.adapter)
            await self._backend.unload_adapter(model_id, request.adapter)
            return admin_pb.UnloadAdapterResponse(model=await self._describe(model_id))
        raise AssertionError("unreachable")

    def _model_id(self, name: str) -> str:
        if not name:
            raise invalid_argument(FieldViolation("model", "is required"))
        return self._catalog.resolve(name, loads_on_demand=True)

    def _residency_for(self, method: str) -> Any:
        residency = self._backend.residency
        if residency is None:
            raise StatusError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method}: the {self._backend.kind} backend loads its models at start and "
                "keeps them (models load and unload on demand with llamacpp)",
                reason="NOT_SUPPORTED",
            )
        return residency

    async def _describe(self, model_id: str) -> admin_pb.LoadedModel:
        """One model's place in memory, from the residency where there is one."""
        adapters = [a.name for a in await self._backend.adapters(model_id) if a.loaded]
        entry = next((e for e in self._catalog.entries() if e.card.id == model_id), None)
        residency = self._backend.residency
        resident = None
        if residency is not None:
            resident = next((m for m in residency.models() if m.model_id == model_id), None)
        if resident is not None:
            idle = resident.idle_seconds
            holds, memory, detail = resident.holds, resident.memory_bytes, resident.detail
        else:
            gate = self._gates.get(model_id)
            holds = gate.running + gate.waiting if gate is not None else 0
            idle, memory = 0.0, entry.card.memory_bytes if entry else 0
            detail = entry.detail if entry else ""
        state = entry.state if entry is not None else ModelState.UNLOADED
        return admin_pb.LoadedModel(
            model=model_id,
            status=STATUS.get(state, STATUS[ModelState.UNLOADED]),
            memory_bytes=memory,
            requests_in_flight=holds,
            idle_for=_duration(idle),
            adapters=adapters,
            detail=detail,
        )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
