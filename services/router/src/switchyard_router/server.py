"""Router lifecycle: listen, keep clusters and health current, reload, drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import model_admin_pb2_grpc as model_admin_grpc
from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc
from switchyard_common import tracing
from switchyard_common.configfile import ConfigError
from switchyard_common.listener import bind
from switchyard_common.process import start_telemetry, stop_requested
from switchyard_common.status import FieldViolation, StatusError, abort, invalid_argument
from switchyard_router import metrics
from switchyard_router.admission.auth import Guard, Principal
from switchyard_router.config import OPEN_BY_DEFAULT, RouterConfig, load_router_config
from switchyard_router.fleet import Ask, FleetState, build_fleet_state
from switchyard_router.fronts.grpc_front import GrpcFront
from switchyard_router.http_api.app import HttpApp
from switchyard_router.http_api.listener import HttpListener
from switchyard_router.operations import model_listing
from switchyard_router.operations.admin import RouterAdmin
from switchyard_router.operations.model_admin import SERVICE_NAME as MODEL_ADMIN_SERVICE_NAME
from switchyard_router.operations.model_admin import ModelAdminForwarder
from switchyard_router.request_path.proxy import Proxy
from switchyard_router.request_path.routing import RouteTable
from switchyard_router.upstream import adapter_residency
from switchyard_router.upstream.endpoints import Cluster

log = logging.getLogger("switchyard.router")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LLMService"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["RouterAdminService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
REDIS_HEALTH_NAME = "switchyard.router.redis"
"""Health status name that says whether the fleet's Redis answers (set only with one)."""
# How long start-up waits for the first health reports before taking traffic.
_INITIAL_HEALTH_WAIT_SECONDS = 2.0
_CONFIG_POLL_SECONDS = 1.0
# How often connections to model servers are checked for connection_pool.idle_timeout_seconds
# (so one closes within a second past it; the timeout is at least 1 s).
_IDLE_SWEEP_SECONDS = 1.0
_STATUS_FLUSH_SECONDS = 0.5
# Listener settings a reload cannot change (the certificate files themselves are
# re-read when they change).
_LISTENER_KEYS = ("tls", "max_message_bytes")


class Router:
    """The router's gRPC server and the state behind it."""

    def __init__(
        self, config: RouterConfig, config_path: Path | None = None, listen_fixed: bool = False
    ) -> None:
        self.config = config
        self.listen = config.listen
        self._listen_fixed = listen_fixed  # set by --listen: reloads keep it
        self.config_path = config_path
        self.clusters: dict[str, Cluster] = {}
        self.proxy = Proxy(RouteTable(None, {}), config.retry)
        self.front = GrpcFront(self.proxy)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # bound at import
        # LLMService and the admin service check keys themselves. Health and
        # reflection are open unless taken out of auth.open_services; only then
        # is there an interceptor (it costs every call, LLMService's too).
        self._intercepting = _closes_open_services(config)
        interceptors = [_KeyInterceptor(self.proxy)] if self._intercepting else []
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
                *config.limits.server_options(),
            ],
        )
        self.server.add_generic_rpc_handlers((self._llm_service_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        admin_grpc.add_RouterAdminServiceServicer_to_server(
            RouterAdmin(lambda: self.clusters, lambda: self.proxy.table, self._authorize_admin),
            self.server,
        )
        model_admin_grpc.add_ModelAdminServiceServicer_to_server(
            ModelAdminForwarder(
                lambda: self.clusters, self._authorize_admin, config.list_models_timeout_seconds
            ),
            self.server,
        )
        # Reflection describes LLMService from the generated descriptors even
        # though the handler is generic, so grpcurl works against the router.
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                MODEL_ADMIN_SERVICE_NAME,
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._fleet_settings: tuple[Any, ...] | None = None
        self._fleet_generation = 0  # only the current fleet state reports to health
        self._config_mtime = self._mtime()
        self._ready = False  # /readyz: serving, and not draining
        self.http: HttpListener | None = None
        if config.http_listen is not None:
            app = HttpApp(self.proxy, self.list_models, self._is_ready, config.max_message_bytes)
            self.http = HttpListener(app, config.http_listen, config.tls)

    def _is_ready(self) -> bool:
        return self._ready

    def _llm_service_handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                # No (de)serializers on the hot path: bytes in, bytes out.
                "Generate": grpc.unary_unary_rpc_method_handler(self.front.generate),
                "StreamGenerate": grpc.unary_stream_rpc_method_handler(self.front.stream_generate),
                "CountTokens": grpc.unary_unary_rpc_method_handler(self.front.count_tokens),
                "ListModels": grpc.unary_unary_rpc_method_handler(
                    self._list_models,  # parses the request itself: bad bytes are its to refuse
                    response_serializer=pb.ListModelsResponse.SerializeToString,
                ),
            },
        )

    async def _list_models(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListModelsResponse:
        try:
            pb.ListModelsRequest.FromString(request)  # no fields yet, but it must be one
        except DecodeError as error:
            reason = f"not a ListModelsRequest: {error}"
            await abort(context, invalid_argument(FieldViolation("request", reason)))
        try:
            return await self.list_models(context.invocation_metadata(), context.time_remaining())
        except StatusError as error:
            await abort(context, error)

    async def list_models(
        self, metadata: Iterable[Any] | None, time_remaining: float | None
    ) -> pb.ListModelsResponse:
        """ListModels for a caller of any front (``StatusError`` when refused): with auth
        on, its key is checked (UNAUTHENTICATED), the listing counts toward its request
        rate (it asks every endpoint), and a key limited to some models sees only those."""
        guard = self.proxy.guard
        principal = None if guard is None else guard.authenticate(metadata)
        limits = principal.limits if principal is not None else None
        if limits is not None and (limits.requests_per_minute or limits.tokens_per_minute):
            await self.proxy.fleet.admit(Ask(limits))
        allowed = principal.models if principal is not None else None
        timeout = self.config.list_models_timeout_seconds
        if time_remaining is not None:
            timeout = min(timeout, time_remaining)
        self.proxy.active += 1  # a drain lets it finish too
        try:
            return await model_listing.list_models(self.proxy.table, timeout, allowed)
        finally:
            self.proxy.active -= 1

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        """The caller's key when auth is on (else None); aborts UNAUTHENTICATED."""
        guard = self.proxy.guard
        if guard is None:
            return None
        try:
            return guard.authenticate(context.invocation_metadata())
        except StatusError as error:
            await abort(context, error)

    async def _authorize_admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The admin service shows every cluster's endpoints and models: only keys
        without a ``models`` limit may see it (else PERMISSION_DENIED)."""
        principal = await self._authenticate(context)
        if principal is not None and principal.models is not None:
            error = StatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                "this API key is limited to some models; the admin service needs a key "
                "without a `models` limit",
                reason="ADMIN_NOT_ALLOWED",
            )
            await abort(context, error)

    async def apply(self, config: RouterConfig) -> None:
        """Makes ``config`` current; requests in flight keep the endpoints they use."""
        for name, cluster_config in config.clusters.items():
            if name in self.clusters:
                self.clusters[name].reconfigure(cluster_config, config.drain_grace_seconds)
            else:
                self.clusters[name] = Cluster(name, cluster_config, config.max_message_bytes)
        gone = [self.clusters.pop(n) for n in set(self.clusters) - set(config.clusters)]
        for cluster in self.clusters.values():
            await cluster.refresh(config.drain_grace_seconds)
        table = RouteTable(config, self.clusters)
        watched = table.watched_models()
        for name, cluster in self.clusters.items():
            cluster.watch(watched.get(name, set()))
        guard = self.proxy.guard
        if config.auth is None:
            guard = None
        elif guard is None or guard.config != config.auth:
            guard = Guard(config.auth)
        if _closes_open_services(config) and not self._intercepting:
            log.warning("auth.open_services: keys for health and reflection take a restart")
        fleet = await self._fleet_state(config)
        fleet.forget_keys_except(guard.key_ids if guard is not None else set())
        self.proxy.configure(
            table, config.retry, guard, config.limits, fleet, config.response_cache
        )
        metrics.ACCESS_LOG.enabled = config.access_log
        if config.listen != self.listen:
            log.warning("listen changed to %s: takes effect on restart", config.listen)
        if config.http_listen != self.config.http_listen:
            log.warning("http_listen changed to %s: takes effect on restart", config.http_listen)
        for key in _LISTENER_KEYS:  # the gRPC server's own settings, fixed at start
            if getattr(config, key) != getattr(self.config, key):
                log.warning("%s changed: takes effect on restart", key)
        if config.limits.server_options() != self.config.limits.server_options():
            log.warning("connection limits changed: take effect on restart")
        self.config = config
        for cluster in gone:  # in-flight requests finish on the endpoints they hold
            self._spawn(cluster.close(config.drain_grace_seconds), f"close {cluster.name}")

    async def _fleet_state(self, config: RouterConfig) -> FleetState:
        """The fleet state for ``config``: the current one while its settings (and the
        Redis password) are unchanged, else a new one; the old one closes once the
        requests that hold it had their grace period."""
        password = None
        if config.redis is not None:
            try:
                password = config.redis.password()
            except OSError as error:  # connecting says so too, and falls back to local limits
                log.error("redis.password_file cannot be read: %s", error.strerror)
        settings = (config.limits_backend, config.redis, config.response_cache, password)
        if settings == self._fleet_settings:
            return self.proxy.fleet
        previous = self.proxy.fleet if self._fleet_settings is not None else None
        self._fleet_settings = settings
        self._fleet_generation += 1
        generation = self._fleet_generation
        fleet = build_fleet_state(
            config.limits_backend,
            config.redis,
            config.response_cache,
            lambda up: self._redis_reachable(up, generation),
        )
        if previous is not None and previous.shared:
            # Until the new one says otherwise (a Redis one does at start).
            await self.health.set(REDIS_HEALTH_NAME, _UNKNOWN)
        await fleet.start()
        if previous is not None:
            self._spawn(_close_later(previous, config.drain_grace_seconds), "close fleet state")
        return fleet

    def _redis_reachable(self, up: bool, generation: int) -> None:
        """Health follows the fleet's Redis (see fleet.redis_state); a replaced fleet
        state, closing after its grace period, no longer speaks for it."""
        if generation != self._fleet_generation:
            return
        status = _SERVING if up else _NOT_SERVING
        self._spawn(self.health.set(REDIS_HEALTH_NAME, status), "redis health")

    async def start(self) -> int:
        await self.apply(self.config)
        port = bind(self.server, self.config.listen, self.config.tls)
        # Give health streams a moment so the first requests find healthy endpoints.
        deadline = time.monotonic() + _INITIAL_HEALTH_WAIT_SECONDS
        while time.monotonic() < deadline and not self._all_reported():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await self.server.start()
        # Ready before the HTTP port accepts: a request then is served, never told
        # the router shuts down (only a drain makes it not ready again).
        self._ready = True
        if self.http is not None:
            await self.http.start()
            log.info("HTTP front listening on %s://%s", self.http.scheme, self.http.listen)
        for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME, MODEL_ADMIN_SERVICE_NAME):
            await self.health.set(name, _SERVING)
        self._spawn(self._refresh_dns(), "dns refresh")
        self._spawn(
            adapter_residency.follow(
                lambda: self.clusters, self.config.list_models_timeout_seconds
            ),
            "adapter residency",
        )
        self._spawn(self._watch_certificates(), "certificate files watch")
        self._spawn(self._close_idle_connections(), "idle connections sweep")
        if self.config_path is not None:
            self._spawn(self._watch_config_file(), "config file watch")
        return port

    def _all_reported(self) -> bool:
        """Every endpoint's health is known and, where it serves, what its models can
        do (so the first requests are routed by capability too)."""
        return all(
            e.health
            and all(h.value != "unknown" for h in e.health.values())
            and (e.models_known or "serving" not in {h.value for h in e.health.values()})
            for c in self.clusters.values()
            for e in c.endpoints.values()
        )

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _refresh_dns(self) -> None:
        next_refresh: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for name, cluster in list(self.clusters.items()):
                if not any(e.startswith("dns:///") for e in cluster.config.endpoints):
                    continue
                if now >= next_refresh.get(name, 0.0):
                    next_refresh[name] = now + cluster.config.dns_refresh_seconds
                    try:
                        await cluster.refresh(self.config.drain_grace_seconds)
                    except Exception:
                        log.exception("refreshing cluster %s failed", name)

    async def _close_idle_connections(self) -> None:
        """Closes connections to model servers that a burst opened once they carried no
        call for their cluster's ``connection_pool.idle_timeout_seconds``."""
        while True:
            await asyncio.sleep(_IDLE_SWEEP_SECONDS)
            now = time.monotonic()
            for cluster in list(self.clusters.values()):
                try:
                    await cluster.close_idle_connections(now)
                except Exception:
                    log.exception("closing idle connections of cluster %s failed", cluster.name)

    async def _watch_certificates(self) -> None:
        """Rebuilds a cluster's channels when its certificate files change, and has the
        HTTP front serve its listener's new ones. (The gRPC listener's own certificates
        are re-read by gRPC at each new connection.)"""
        while True:
            await asyncio.sleep(_CONFIG_POLL_SECONDS)
            if self.http is not None:
                try:
                    self.http.check_certificates()
                except Exception:
                    log.exception("reloading the HTTP front's certificates failed")
            for cluster in list(self.clusters.values()):
                try:
                    cluster.check_certificates(self.config.drain_grace_seconds)
                except Exception:
                    log.exception("reloading certificates of cluster %s failed", cluster.name)

    def _mtime(self) -> tuple[float, ...] | None:
        """When the config file, and the secret files it names, last changed."""
        try:
            if self.config_path is None:
                return None
            stamps = [self.config_path.stat().st_mtime]
        except OSError:
            return None
        # Key hashes and the Redis password, mounted from Secrets, change without the
        # config file changing.
        files = [key.sha256_file for key in (self.config.auth.keys if self.config.auth else ())]
        files.append(self.config.redis.password_file if self.config.redis else None)
        for path in files:
            if path is not None:
                try:
                    stamps.append(path.stat().st_mtime)
                except OSError:
                    stamps.append(0.0)
        return tuple(stamps)

    async def _watch_config_file(self) -> None:
        while True:
            await asyncio.sleep(_CONFIG_POLL_SECONDS)
            mtime = self._mtime()
            if mtime is not None and mtime != self._config_mtime:
                self._config_mtime = mtime
                log.info("config file (or a key file) changed")
                await self.reload()

    async def reload(self) -> bool:
        """Re-reads the config file; keeps the current config if the new one is invalid."""
        if self.config_path is None:
            log.warning("reload requested but the router was not started from a file")
            return False
        self._config_mtime = self._mtime()  # so the file watch does not apply it again
        try:
            config = load_router_config(self.config_path)
        except ConfigError as error:
            log.error("config reload refused; keeping the current config: %s", error)
            return False
        if self._listen_fixed:
            config = config.model_copy(update={"listen": self.listen})
        await self.apply(config)
        self._config_mtime = self._mtime()  # the files the new config names
        log.info("config reloaded: routes %s", ", ".join(sorted(r.model for r in config.routes)))
        return True

    async def drain(self) -> None:
        """NOT_SERVING, refuse new calls, let LLMService calls in flight finish (up
        to ``drain_grace_seconds``), then stop.

        The wait is for those calls only: ``server.stop(grace)`` alone would also
        wait for every client's open Health.Watch stream, i.e. the whole grace period.
        """
        await self.health.enter_graceful_shutdown()
        self._ready = False
        grace = self.config.drain_grace_seconds
        stopping = asyncio.ensure_future(self.server.stop(grace))  # no new calls from now
        deadline = time.monotonic() + grace
        log.info("draining: %d requests in flight, up to %.0fs to finish", self.proxy.active, grace)
        # Polled: the hot path updates a plain counter, not an event.
        while self.proxy.active and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.proxy.active:
            log.warning("grace period over; cancelling %d requests", self.proxy.active)
        else:  # a handler that returned may still be sending its status: a moment for it
            await asyncio.wait({stopping}, timeout=_STATUS_FLUSH_SECONDS)
        await self.server.stop(0)  # ends what is left: health watches, overdue requests
        await stopping
        if self.http is not None:  # it answered /readyz 503 and refused new requests meanwhile
            await self.http.stop(max(0.0, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(c.close() for c in self.clusters.values()))
        await self.proxy.fleet.close()  # flushes the last settlements and cache writes


async def serve(
    config: RouterConfig, config_path: Path | None = None, listen_fixed: bool = False
) -> None:
    """Runs the router until SIGTERM or SIGINT; SIGHUP reloads the config file."""
    start_telemetry("switchyard-router", config.metrics_listen)
    router = Router(config, config_path, listen_fixed)
    port = await router.start()
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "router listening on %s:%d (routes: %s)",
        host,
        port,
        ", ".join(sorted(router.proxy.table.routes)),
    )
    stop = stop_requested()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = loop.create_task(router.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    log.info("shutdown requested; draining")
    await router.drain()
    tracing.shutdown()  # flush spans still batched
    log.info("stopped")


async def _close_later(fleet: FleetState, grace: float) -> None:
    await asyncio.sleep(grace)
    await fleet.close()


def _closes_open_services(config: RouterConfig) -> bool:
    """Whether health or reflection need a key (an interceptor checks them)."""
    return config.auth is not None and not set(OPEN_BY_DEFAULT) <= set(config.auth.open_services)


if TYPE_CHECKING:
    _Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


class _KeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Asks for an API key on health and reflection when they are not in
    ``auth.open_services`` (LLMService and the admin services check it themselves)."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy
        self._checked = {SERVICE_NAME, ADMIN_SERVICE_NAME, MODEL_ADMIN_SERVICE_NAME}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        guard = self._proxy.guard
        service = handler_call_details.method.lstrip("/").split("/", 1)[0]
        if guard is None or service in self._checked or service in guard.open_services:
            return await continuation(handler_call_details)
        try:
            guard.authenticate(handler_call_details.invocation_metadata)
        except StatusError as error:
            handler = await continuation(handler_call_details)
            # An unknown method has no handler: gRPC answers UNIMPLEMENTED as usual.
            return handler if handler is None else _refusing(handler, error)
        return await continuation(handler_call_details)


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], error: StatusError
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape that ends the call with ``error``."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, error)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
