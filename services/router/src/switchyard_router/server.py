"""Router lifecycle: listen with health and reflection, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchyard.configfile import ConfigError
from switchyard.v1 import llm_service_pb2 as pb
from switchyard_router import catalog
from switchyard_router.config import RouterConfig
from switchyard_router.proxy import Proxy
from switchyard_router.routing import RouteTable

log = logging.getLogger("switchyard.router")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LLMService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
DRAIN_GRACE_SECONDS = 30.0


class Router:
    """The router's gRPC server."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.table = RouteTable(config)
        self.proxy = Proxy(self.table)
        # `health.aio` is bound at import time, out of mypy's sight.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers((self._llm_service_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Reflection describes LLMService from the generated descriptors even
        # though the handler is generic, so grpcurl works against the router.
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    def _llm_service_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                # No (de)serializers on the hot path: bytes in, bytes out.
                "Generate": grpc.unary_unary_rpc_method_handler(self.proxy.generate),
                "StreamGenerate": grpc.unary_stream_rpc_method_handler(self.proxy.stream_generate),
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self._list_models,
                    request_deserializer=pb.ListModelsRequest.FromString,
                    response_serializer=pb.ListModelsResponse.SerializeToString,
                ),
            },
        )

    async def _list_models(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        timeout = self.config.list_models_timeout_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, remaining)
        return await catalog.list_models(self.table, timeout)

    async def start(self) -> int:
        port = self.server.add_insecure_port(self.config.listen)
        if port == 0:
            raise ConfigError(f"listen: cannot bind {self.config.listen}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _SERVING)
        return port

    async def drain(self) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(DRAIN_GRACE_SECONDS)
        await self.table.close()


async def serve(config: RouterConfig) -> None:
    """Runs the router until SIGTERM or SIGINT."""
    router = Router(config)
    port = await router.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "router listening on %s:%d (routes: %s)", host, port, ", ".join(sorted(router.table.routes))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutdown requested; draining")
    await router.drain()
    log.info("stopped")
