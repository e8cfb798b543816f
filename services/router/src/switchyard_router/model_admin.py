"""ModelAdminService on the router: forwards each call to the model server it names.

Operators load and unload models and adapters through the router they already
reach (``switchyard models load ... --endpoint host:port``), with the router's
admin permission (the same check as RouterAdminService: with API keys on, a key
without a ``models`` limit). The request's ``endpoint`` picks the model server
among the router's endpoints (NOT_FOUND lists them); the call goes over the
router's own channel to it (its TLS included) with ``endpoint`` cleared, and
its answer or status comes back as it was. ListLoaded without an endpoint asks
every endpoint and marks each answer with the endpoint it came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
import grpc.aio

from switchyard.v1 import model_admin_pb2 as admin_pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_common.status import DETAILS_METADATA_KEY, StatusError, abort
from switchyard_router.endpoints import Cluster, Endpoint

Context = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["ModelAdminService"].full_name
_DEFAULT_TIMEOUT_SECONDS = 120.0


class ModelAdminForwarder(admin_grpc.ModelAdminServiceServicer):
    """Forwards ModelAdminService calls to the endpoint each one names."""

    def __init__(
        self,
        clusters: Callable[[], Mapping[str, Cluster]],
        authorize: Callable[[Context], Awaitable[object]],
        list_timeout: float,
    ) -> None:
        self._clusters = clusters
        self._authorize = authorize  # aborts UNAUTHENTICATED or PERMISSION_DENIED (auth on)
        self._list_timeout = list_timeout

    async def LoadModel(  # noqa: N802 - gRPC method name
        self, request: admin_pb.LoadModelRequest, context: Context
    ) -> admin_pb.LoadModelResponse:
        response: admin_pb.LoadModelResponse = await self._forward(
            request, context, lambda stub: stub.LoadModel
        )
        return response

    async def UnloadModel(  # noqa: N802 - gRPC method name
        self, request: admin_pb.UnloadModelRequest, context: Context
    ) -> admin_pb.UnloadModelResponse:
        response: admin_pb.UnloadModelResponse = await self._forward(
            request, context, lambda stub: stub.UnloadModel
        )
        return response

    async def LoadAdapter(  # noqa: N802 - gRPC method name
        self, request: admin_pb.LoadAdapterRequest, context: Context
    ) -> admin_pb.LoadAdapterResponse:
        response: admin_pb.LoadAdapterResponse = await self._forward(
            request, context, lambda stub: stub.LoadAdapter
        )
        return response

    async def UnloadAdapter(  # noqa: N802 - gRPC method name
        self, request: admin_pb.UnloadAdapterRequest, context: Context
    ) -> admin_pb.UnloadAdapterResponse:
        response: admin_pb.UnloadAdapterResponse = await self._forward(
            request, context, lambda stub: stub.UnloadAdapter
        )
        return response

    async def ListLoaded(  # noqa: N802 - gRPC method name
        self, request: admin_pb.ListLoadedRequest, context: Context
    ) -> admin_pb.ListLoadedResponse:
        await self._authorize(context)
        if request.endpoint:
            endpoints = [await self._endpoint(request.endpoint, context)]
        else:
            endpoints = self._endpoints()
        timeout = _timeout(context, self._list_timeout)
        answers = await asyncio.gather(
            *(
                admin_grpc.ModelAdminServiceStub(e.channel).ListLoaded(
                    admin_pb.ListLoadedRequest(), timeout=timeout
                )
                for e in endpoints
            ),
            return_exceptions=True,
        )
        response = admin_pb.ListLoadedResponse()
        for endpoint, answer in zip(endpoints, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                if request.endpoint:  # the one asked for: its status, as it came
                    await _relay(context, answer)
                reason = f"{answer.code().name}: {answer.details() or ''}"
                response.unreachable_endpoints.append(f"{endpoint.address}: {reason}")
                continue
            if isinstance(answer, BaseException):
                raise answer
            for model in answer.models:
                model.endpoint = endpoint.address
                response.models.append(model)
            for budget in answer.budgets:
                budget.endpoint = endpoint.address
                response.budgets.append(budget)
        return response

    async def _forward(
        self,
        request: Any,
        context: Context,
        method: Callable[[admin_grpc.ModelAdminServiceStub], Any],
    ) -> Any:
        await self._authorize(context)
        endpoint = await self._endpoint(request.endpoint, context)
        forwarded = type(request)()
        forwarded.CopyFrom(request)
        forwarded.endpoint = ""
        call = method(admin_grpc.ModelAdminServiceStub(endpoint.channel))
        try:
            response = await call(forwarded, timeout=_timeout(context, _DEFAULT_TIMEOUT_SECONDS))
        except grpc.aio.AioRpcError as error:
            await _relay(context, error)
        response.model.endpoint = endpoint.address
        return response

    async def _endpoint(self, address: str, context: Context) -> Endpoint:
        """The router's endpoint at ``address``; INVALID_ARGUMENT or NOT_FOUND."""
        if not address:
            error = StatusError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "endpoint: name the model server (host:port, see `switchyard endpoints`)",
                reason="INVALID_REQUEST",
            )
            await abort(context, error)
        for endpoint in self._endpoints():
            if endpoint.address == address:
                return endpoint
        known = ", ".join(e.address for e in self._endpoints()) or "none"
        await abort(
            context,
            StatusError(
                grpc.StatusCode.NOT_FOUND,
                f"no endpoint {address!r} in any cluster; endpoints: {known}",
                reason="ENDPOINT_NOT_FOUND",
                metadata={"endpoint": address},
            ),
        )

    def _endpoints(self) -> list[Endpoint]:
        """Every endpoint once (an address in two clusters is one model server)."""
        found: dict[str, Endpoint] = {}
        for _, cluster in sorted(self._clusters().items()):
            for address, endpoint in sorted(cluster.endpoints.items()):
                found.setdefault(address, endpoint)
        return list(found.values())


def _timeout(context: Context, default: float) -> float:
    remaining = context.time_remaining()
    return default if remaining is None else remaining


async def _relay(context: Context, error: grpc.aio.AioRpcError) -> None:
    """Ends the call with the model server's status and its details trailer."""
    received: Iterable[Any] = error.trailing_metadata() or ()
    trailers = tuple((key, value) for key, value in received if key == DETAILS_METADATA_KEY)
    await abort(context, StatusError(error.code(), error.details() or ""), trailers)
