"""Model server lifecycle: listen, load, serve, drain.

Health (overall, per service and per model name) is NOT_SERVING while models
load and SERVING once they are ready. Load reports (ORCA) go out with every
response and on an out-of-band stream (``load_reporting``). On SIGTERM or SIGINT every name turns
NOT_SERVING first, so routers and Kubernetes stop sending new work, then
in-flight requests get ``drain_grace_seconds`` to finish.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import model_admin_pb2_grpc as admin_grpc
from switchyard_common import tracing
from switchyard_common.configfile import ConfigError, describe_validation_error
from switchyard_common.listener import bind
from switchyard_common.load_report import OPEN_RCA_SERVICE
from switchyard_common.process import start_telemetry, stop_requested
from switchyard_common.status import abort
from switchyard_modelserver import metrics
from switchyard_modelserver.admission import ModelGate
from switchyard_modelserver.backends.base import Backend
from switchyard_modelserver.backends.registry import backend_class
from switchyard_modelserver.catalog import CatalogEntry, ModelCatalog
from switchyard_modelserver.config import ModelServerConfig
from switchyard_modelserver.domain import ModelState
from switchyard_modelserver.in_flight import InFlight
from switchyard_modelserver.load_reporting import LoadReporter, open_rca_handler
from switchyard_modelserver.model_admin import SERVICE_NAME as ADMIN_SERVICE_NAME
from switchyard_modelserver.model_admin import ModelAdmin
from switchyard_modelserver.model_defaults import ModelDefaults
from switchyard_modelserver.request_parsing import UnreadableRequest, lenient_parser, unreadable
from switchyard_modelserver.servicer import LLMServicer

log = logging.getLogger("switchyard.modelserver")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LLMService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _llm_service_handler(
    servicer: LLMServicer, max_request_bytes: int | None
) -> grpc.GenericRpcHandler[Any, Any]:
    """LLMService's handlers, with request parsing that cannot fail inside grpcio."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Generate": grpc.unary_unary_rpc_method_handler(
                servicer.Generate,
                request_deserializer=lenient_parser(pb.GenerateRequest, max_request_bytes),
                response_serializer=pb.GenerateResponse.SerializeToString,
            ),
            "StreamGenerate": grpc.unary_stream_rpc_method_handler(
                servicer.StreamGenerate,
                request_deserializer=lenient_parser(pb.StreamGenerateRequest, max_request_bytes),
                response_serializer=pb.StreamGenerateResponse.SerializeToString,
            ),
            "ListModels": grpc.unary_unary_rpc_method_handler(
                functools.partial(_list_models, servicer),
                request_deserializer=lenient_parser(pb.ListModelsRequest),
                response_serializer=pb.ListModelsResponse.SerializeToString,
            ),
            "CountTokens": grpc.unary_unary_rpc_method_handler(
                servicer.CountTokens,
                request_deserializer=lenient_parser(pb.CountTokensRequest, max_request_bytes),
                response_serializer=pb.CountTokensResponse.SerializeToString,
            ),
        },
    )


async def _list_models(
    servicer: LLMServicer,
    request: pb.ListModelsRequest | UnreadableRequest,
    context: grpc.aio.ServicerContext[Any, Any],
) -> pb.ListModelsResponse:
    if isinstance(request, UnreadableRequest):
        await abort(context, unreadable(request))
    return await servicer.ListModels(request, context)


def build_backend(config: ModelServerConfig) -> Backend:
    """Finds the configured backend and validates its options."""
    cls = backend_class(config.backend.kind)
    try:
        return cls.from_options(config.backend.options())
    except ValidationError as error:
        raise ConfigError(
            f"invalid options for backend {config.backend.kind!r}\n"
            f"{describe_validation_error(error, prefix='backend.')}"
        ) from None
    except ValueError as error:
        raise ConfigError(str(error)) from None


class ModelServer:
    """One backend served over gRPC with health and reflection."""

    def __init__(self, config: ModelServerConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        # `health.aio` is bound at import time, out of mypy's sight.
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_updates: set[asyncio.Task[None]] = set()
        self.catalog = ModelCatalog(backend.models(), on_change=self._on_model_change)
        self.gates = {
            entry.card.id: ModelGate(
                entry.card.id,
                backend.concurrency(entry.card.id),
                config.max_queue_per_model,
                config.queue_retry_after_seconds,
            )
            for entry in self.catalog.entries()
        }
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Routers ping every few seconds to find hung servers: the default
                # limits allow that (min_ping_interval_seconds 0.5) and close
                # connections that ping faster (GOAWAY "too_many_pings").
                *config.limits.server_options(),
            ]
        )
        self.in_flight = InFlight()
        self.load_reporter = LoadReporter(
            self.gates, backend, config.min_load_report_interval_seconds
        )
        self.server.add_generic_rpc_handlers(
            (
                open_rca_handler(self.load_reporter),
                _llm_service_handler(
                    LLMServicer(
                        backend,
                        self.catalog,
                        self.gates,
                        self.in_flight,
                        config.stream_coalesce_ms / 1000,
                        config.limits,
                        self._max_tokens_per_model(config),
                        self._model_defaults(config),
                        self.load_reporter.trailers,
                    ),
                    config.limits.max_request_bytes,
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        admin_grpc.add_ModelAdminServiceServicer_to_server(
            ModelAdmin(backend, self.catalog, self.gates), self.server
        )
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
                OPEN_RCA_SERVICE,
            ),
            self.server,
        )

    def _max_tokens_per_model(self, config: ModelServerConfig) -> dict[str, int]:
        """``limits.max_tokens_per_model`` by model id (a name may be an alias)."""
        ceilings: dict[str, int] = {}
        for name, ceiling in config.limits.max_tokens_per_model.items():
            model_id = self.catalog.lookup(name)
            if model_id is None:
                known = ", ".join(e.card.id for e in self.catalog.entries())
                raise ConfigError(
                    f"limits.max_tokens_per_model: no model {name!r} (models: {known})"
                )
            ceilings[model_id] = ceiling
        return ceilings

    def _model_defaults(self, config: ModelServerConfig) -> dict[str, ModelDefaults]:
        """``model_defaults`` by model id, templates read and compiled (ConfigError
        naming the key when a name, a template or the backend does not fit)."""
        resolved: dict[str, ModelDefaults] = {}
        for name, entry in config.model_defaults.items():
            key = f"model_defaults.{name}"
            model_id = self.catalog.lookup(name)
            if model_id is None:
                known = ", ".join(e.card.id for e in self.catalog.entries())
                raise ConfigError(f"{key}: no model {name!r} (models: {known})")
            try:
                defaults = ModelDefaults.from_config(entry)
            except ValueError as error:
                raise ConfigError(f"{key}: {error}") from None
            if defaults.chat_template is not None and not self.backend.formats_chats:
                raise ConfigError(
                    f"{key}.chat_template: the {self.backend.kind} backend does not format "
                    "chats itself (its provider does), so it cannot use a chat template"
                )
            resolved[model_id] = defaults
        return resolved

    def _on_model_change(self, entry: CatalogEntry) -> None:
        model_id = entry.card.id
        if entry.state is ModelState.REMOVED:
            self.gates.pop(model_id, None)  # reported once no request holds it
        elif model_id not in self.gates:  # a model the backend found later
            self.gates[model_id] = ModelGate(
                model_id,
                self.backend.concurrency(model_id),
                self.config.max_queue_per_model,
                self.config.queue_retry_after_seconds,
            )
        metrics.MODEL_READY.labels(model_id).set(1 if entry.serving else 0)
        metrics.MODEL_LOADED.labels(model_id).set(1 if entry.state is ModelState.READY else 0)
        status = _SERVING if entry.serving else _NOT_SERVING
        for name in self.catalog.health_names(entry):
            self._set_health(name, status)
        entries = self.catalog.entries()
        serving = any(e.serving for e in entries) and not any(e.starting for e in entries)
        overall = _SERVING if serving else _NOT_SERVING
        self._set_health("", overall)
        self._set_health(SERVICE_NAME, overall)

    def _set_health(self, name: str, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        task = asyncio.get_running_loop().create_task(self.health.set(name, status))
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def start(self) -> int:
        """Starts listening (health NOT_SERVING) and returns the bound port."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, _NOT_SERVING)
        for entry in self.catalog.entries():
            for name in self.catalog.health_names(entry):
                await self.health.set(name, _NOT_SERVING)
        port = bind(self.server, self.config.listen, self.config.tls)
        await self.server.start()
        return port

    async def load(self) -> None:
        """Loads the backend's models; health follows each one."""
        await self.backend.load(self.catalog.update)
        ready = [e.card.id for e in self.catalog.entries() if e.state is ModelState.READY]
        unloaded = [e.card.id for e in self.catalog.entries() if e.state is ModelState.UNLOADED]
        if not ready and not unloaded:
            log.error("no model could be loaded; serving health NOT_SERVING")
        else:
            log.info(
                "ready: %s%s",
                ", ".join(ready) or "none loaded",
                f"; loaded on demand: {', '.join(unloaded)}" if unloaded else "",
            )

    async def drain(self) -> None:
        """NOT_SERVING everywhere, refuse new work, let in-flight requests finish, stop.

        We wait for generation requests ourselves rather than through
        ``server.stop(grace)``: that would also wait for every open health
        Watch stream (routers keep one open), i.e. always the whole grace period.
        """
        await self.health.enter_graceful_shutdown()
        self.in_flight.draining = True
        grace = self.config.drain_grace_seconds
        log.info("draining: %d in flight, up to %.0fs to finish", self.in_flight.count, grace)
        try:
            await asyncio.wait_for(self.in_flight.idle(), grace)
        except TimeoutError:
            log.warning("grace period over; cancelling %d requests", self.in_flight.count)
        await self.server.stop(0)
        await self.backend.close()


class BackendFailedError(RuntimeError):
    """The backend can no longer serve (e.g. its engine died); the process exits non-zero."""


async def serve(config: ModelServerConfig) -> None:
    """Runs a model server until SIGTERM or SIGINT (or until its backend fails for good)."""
    backend = build_backend(config)
    start_telemetry("switchyard-modelserver", config.metrics_listen)
    try:
        model_server = ModelServer(config, backend)
    except ConfigError:
        raise
    except ValueError as error:  # e.g. an alias that names another model
        raise ConfigError(f"backend: {error}") from None
    port = await model_server.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "modelserver listening on %s:%d (backend %s, models: %s)",
        host,
        port,
        backend.kind,
        ", ".join(e.card.id for e in model_server.catalog.entries()),
    )
    stop = stop_requested()
    loading = asyncio.create_task(model_server.load())
    stopping = asyncio.create_task(stop.wait())
    failing = asyncio.create_task(backend.failure())
    await asyncio.wait((stopping, failing), return_when=asyncio.FIRST_COMPLETED)
    failed = failing.result() if failing.done() else None
    if failed is None:
        log.info("shutdown requested")
    else:
        log.error("backend failed: %s; stopping", failed)
    for task in (loading, stopping, failing):
        task.cancel()
    await model_server.drain()
    tracing.shutdown()  # flush spans still batched
    log.info("stopped")
    if failed is not None:
        raise BackendFailedError(failed)
