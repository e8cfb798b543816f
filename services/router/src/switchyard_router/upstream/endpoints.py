"""Endpoints (one model server, one channel each) and the clusters that group them.

An endpoint takes new requests for a model when its Health.Watch stream says
SERVING for that model name, it is not ejected by outlier detection (``outlier``)
and it is not draining. A lost connection is tried again after the cluster's
``reconnect_backoff`` (gRPC's connection attempts and the health watch alike), so
a restarted replica is found within about ``max_seconds`` of listening.

Every change to who is healthy bumps the cluster's ``Epoch``, which is how the
pickers know to count healthy endpoints again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.listener import CertificateFiles
from switchyard_router import metrics
from switchyard_router.config import ClusterConfig, ReconnectBackoffConfig
from switchyard_router.load_balancing import capabilities
from switchyard_router.load_balancing.picker import NO_REPORT, Epoch, ReportedLoad
from switchyard_router.upstream.connection_pool import (
    LIST_MODELS,
    Connection,
    ConnectionPool,
    close_connections,
)
from switchyard_router.upstream.health import HealthWatcher
from switchyard_router.upstream.load_reports import LoadReportWatcher, from_trailers
from switchyard_router.upstream.model_catalog import capabilities_by_model, loaded_adapters
from switchyard_router.upstream.outlier import EjectionState, OutlierDetector

log = logging.getLogger("switchyard.router.endpoints")

DNS_SCHEME = "dns:///"
MODELS_READ_TIMEOUT_SECONDS = 2.0
"""How long the ListModels read on a fresh SERVING waits (``list_models_timeout_seconds``'s
default)."""
_LIST_MODELS_REQUEST = pb.ListModelsRequest().SerializeToString()


# Which Endpoint owns each (cluster, address) series of the health gauge.
_gauge_owner: dict[tuple[str, str], Endpoint] = {}


class ModelHealth(enum.Enum):
    """What the health stream last said about one model on one endpoint."""

    UNKNOWN = "unknown"
    SERVING = "serving"
    NOT_SERVING = "not_serving"
    UNREACHABLE = "unreachable"


class EndpointState(enum.Enum):
    """An endpoint's overall state, for operators."""

    HEALTHY = "healthy"
    NOT_SERVING = "not_serving"
    UNREACHABLE = "unreachable"
    EJECTED = "ejected"
    UNKNOWN = "unknown"
    DRAINING = "draining"


_STATE_OF_HEALTH = {
    ModelHealth.SERVING: EndpointState.HEALTHY,
    ModelHealth.NOT_SERVING: EndpointState.NOT_SERVING,
    ModelHealth.UNREACHABLE: EndpointState.UNREACHABLE,
    ModelHealth.UNKNOWN: EndpointState.UNKNOWN,
}


class Endpoint:
    """One model server: its connections (``connection_pool``), health and load.

    ``detector`` is its cluster's outlier detection (which also holds the cluster's
    epoch); an endpoint made without one is a cluster of its own.
    """

    def __init__(
        self,
        cluster: str,
        address: str,
        config: ClusterConfig,
        max_message_bytes: int,
        credentials: grpc.ChannelCredentials | None = None,
        detector: OutlierDetector | None = None,
    ) -> None:
        self.cluster = cluster
        self.address = address
        if detector is None:
            detector = OutlierDetector(cluster, config.outlier_detection, {address: self}, Epoch())
        self.detector = detector
        self.epoch = detector.epoch
        self.reconnect_backoff: ReconnectBackoffConfig = config.reconnect_backoff
        backoff = config.reconnect_backoff
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Pings find a hung peer (e.g. SIGSTOP, a dead node): its health
            # stream breaks and it leaves rotation. Model servers accept pings
            # this often; come back quickly when a replica restarts.
            ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
            # This grpcio times keepalive pings out with this one (default 1 min).
            ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", int(config.keepalive_seconds * 1000)),
            # gRPC's default (1 s, x1.6, up to 120 s) keeps a restarted replica dark
            # long after it listens again. (gRPC adds its own +-20% jitter.)
            ("grpc.initial_reconnect_backoff_ms", int(backoff.initial_seconds * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(backoff.max_seconds * 1000)),
            # Despite its name, gRPC's "min reconnect backoff" is each connection
            # attempt's minimum timeout (MIN_CONNECT_TIMEOUT in gRPC's connection-backoff
            # doc). Set to the back-off, a replica whose TCP + TLS + HTTP/2 set-up takes
            # longer than 0.3 s (a far zone) was never reached.
            ("grpc.min_reconnect_backoff_ms", int(config.connect_timeout_seconds * 1000)),
        ]
        if credentials is not None and config.tls is not None and config.tls.server_name:
            options.append(("grpc.ssl_target_name_override", config.tls.server_name))

        def open_channel(extra: list[tuple[str, Any]]) -> grpc.aio.Channel:
            if credentials is None:
                return grpc.aio.insecure_channel(address, options=options + extra)
            return grpc.aio.secure_channel(address, credentials, options=options + extra)

        self.pool = ConnectionPool(address, config.connection_pool, open_channel)
        self.channel: grpc.aio.Channel = self.pool.primary
        """The first connection: health watch and ListModels."""
        self.list_models = self.channel.unary_unary(LIST_MODELS, None, None)
        self.health: dict[str, ModelHealth] = {}
        self.outstanding = 0
        self.reported: ReportedLoad = NO_REPORT  # its model server's last load report
        self.elsewhere = 0.0  # requests there from others, by that report
        self.ejection = EjectionState()
        self.draining = False
        self.adapters: dict[str, frozenset[str]] = {}
        """LoRA adapters in memory there, by model name (id and aliases): from its
        ListModels (``adapter_refresh_seconds``) and from requests it served."""
        self.capabilities: dict[str, int] = {}
        """What each model there can do (``capabilities`` bit sets), by model name (id
        and aliases), from its ListModels: read when it says SERVING on a new health
        stream and with the adapters. A model not in it is assumed capable."""
        self._models_read: asyncio.Task[None] | None = None
        self.watcher = HealthWatcher(self)
        self.load_reports = LoadReportWatcher(self)
        # Read at scrape time: no cost on the request path.
        metrics.ENDPOINT_HEALTHY.labels(cluster, address).set_function(
            lambda: 1.0 if self.state() is EndpointState.HEALTHY else 0.0
        )
        reported = metrics.ENDPOINT_REPORTED_REQUESTS
        reported.labels(cluster, address, "running").set_function(lambda: self.reported.running)
        reported.labels(cluster, address, "waiting").set_function(lambda: self.reported.waiting)
        metrics.ENDPOINT_REPORTED_KV_CACHE.labels(cluster, address).set_function(
            lambda: self.reported.kv_cache_usage
        )
        metrics.UPSTREAM_CONNECTIONS.labels(cluster, address).set_function(
            lambda: len(self.pool.connections)
        )
        _gauge_owner[(cluster, address)] = self

    # Health, from the watcher.
    def set_model_health(self, model: str, serving: bool, fresh: bool = False) -> None:
        """What the health stream says of ``model``; ``fresh``: its first report on a
        new stream (after a reconnect)."""
        new = ModelHealth.SERVING if serving else ModelHealth.NOT_SERVING
        old = self.health.get(model)
        if old is not new:
            log.info("%s (%s): %s is %s", self.address, self.cluster, model, new.value)
            self.health[model] = new
            self.epoch.bump()
        if fresh:
            self.pool.forget_learned_limits()
        if serving and (fresh or old is not new):
            self.detector.health_check_passed(self)

    def read_models_soon(self) -> None:
        """Reads its ListModels once now that it serves (a restarted model server may
        serve other models, or the same with other capabilities), so that routing by
        capability is right from its first request, whatever ``adapter_refresh_seconds``.
        One read at a time, however many model names report."""
        if self._models_read is None or self._models_read.done():
            self._models_read = asyncio.get_running_loop().create_task(
                self.read_models(MODELS_READ_TIMEOUT_SECONDS), name=f"models {self.address}"
            )

    @property
    def models_known(self) -> bool:
        """Its first ListModels read since it said SERVING has ended (answered or not)."""
        return self._models_read is not None and self._models_read.done()

    async def read_models(self, timeout: float) -> None:
        """Reads its ListModels: the adapters in memory and each model's capabilities.
        Keeps what was known if it does not answer."""
        try:
            raw = await self.list_models(_LIST_MODELS_REQUEST, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            log.debug("ListModels on %s failed: %s", self.address, error.code().name)
            return
        response = pb.ListModelsResponse.FromString(raw)
        self.set_adapters(loaded_adapters(response))
        self.set_capabilities(capabilities_by_model(response))

    def set_unreachable(self, model: str, reason: str) -> None:
        if self.health.get(model) is not ModelHealth.UNREACHABLE:
            log.info("%s (%s): unreachable for %s: %s", self.address, self.cluster, model, reason)
            self.health[model] = ModelHealth.UNREACHABLE
            self.epoch.bump()

    def forget_model(self, model: str) -> None:
        if self.health.pop(model, None) is not None:
            self.epoch.bump()

    # LoRA adapters in memory, for adapter affinity.
    def holds_adapter(self, model: str, adapter: str) -> bool:
        held = self.adapters.get(model)
        return held is not None and adapter in held

    def hold_adapter(self, model: str, adapter: str) -> None:
        """It served a request with ``adapter``, so it has it loaded now."""
        held = self.adapters.get(model, frozenset())
        if adapter not in held:
            self.adapters[model] = held | {adapter}

    def set_adapters(self, adapters: dict[str, frozenset[str]]) -> None:
        """What its ListModels says is loaded now (replaces what was known)."""
        if adapters != self.adapters:
            described = "; ".join(
                f"{m}: {', '.join(sorted(a))}" for m, a in sorted(adapters.items()) if a
            )
            log.info(
                "%s (%s): adapters loaded: %s", self.address, self.cluster, described or "none"
            )
        self.adapters = adapters

    # Capabilities, for routing by what a request needs.
    def capabilities_of(self, model: str) -> int:
        """What ``model`` can do there (a ``capabilities`` bit set; all bits: not known)."""
        return self.capabilities.get(model, capabilities.UNKNOWN)

    def set_capabilities(self, by_model: dict[str, int]) -> None:
        """What its ListModels says each model can do (replaces what was known)."""
        if by_model != self.capabilities:
            log.info(
                "%s (%s): capabilities: %s",
                self.address,
                self.cluster,
                "; ".join(f"{m}: {capabilities.describe(c)}" for m, c in sorted(by_model.items()))
                or "none",
            )
            self.capabilities = by_model
            self.epoch.bump()  # the routes over it count again what their targets lack

    # Eligibility.
    def ejected(self) -> bool:
        return self.ejection.ejected

    def serves(self, model: str) -> bool:
        """Takes new requests for ``model`` now."""
        return (
            self.health.get(model) is ModelHealth.SERVING
            and not self.draining
            and not self.ejection.ejected
        )

    def may_serve(self, model: str) -> bool:
        """Health not known yet (just added, or no health service): worth a try."""
        return (
            self.health.get(model, ModelHealth.UNKNOWN) is ModelHealth.UNKNOWN
            and not self.draining
            and not self.ejection.ejected
        )

    def connected(self, model: str) -> bool:
        """Serving ``model`` by its health stream, ejected or not: panic routing's pool."""
        return self.health.get(model) is ModelHealth.SERVING and not self.draining

    # Load, from the model server's reports.
    def take_report(self, trailers: Iterable[Any] | None) -> None:
        """Keeps the load report in an attempt's trailing metadata, if it has one."""
        reported = from_trailers(trailers)
        if reported is not None:
            self.heard(reported)

    def heard(self, reported: ReportedLoad) -> None:
        """Keeps its model server's latest load report; what it counts beyond this
        router's own requests in flight now is other routers' and clients'."""
        self.reported = reported
        self.elsewhere = max(0.0, reported.in_flight - self.outstanding)

    def forget_report(self) -> None:
        """Its model server went away: what it last said no longer holds."""
        self.reported = NO_REPORT
        self.elsewhere = 0.0

    # Outlier detection, from the proxy's attempts.
    def record_success(self) -> None:
        self.detector.record_success(self)

    def record_failure(self, reason: str) -> None:
        self.detector.record_failure(self, reason)

    def state(self) -> EndpointState:
        if self.draining:
            return EndpointState.DRAINING
        if self.ejected():
            return EndpointState.EJECTED
        states = set(self.health.values())
        if ModelHealth.SERVING in states:
            return EndpointState.HEALTHY
        if ModelHealth.UNREACHABLE in states:
            return EndpointState.UNREACHABLE
        if ModelHealth.NOT_SERVING in states:
            return EndpointState.NOT_SERVING
        return EndpointState.UNKNOWN

    def state_for(self, model: str) -> EndpointState:
        """Its state for one model name: what a route's UNAVAILABLE message says (an
        endpoint healthy for its other models but not serving this one is not_serving)."""
        if self.draining:
            return EndpointState.DRAINING
        if self.ejected():
            return EndpointState.EJECTED
        return _STATE_OF_HEALTH[self.health.get(model, ModelHealth.UNKNOWN)]

    async def drain_and_close(self, grace: float) -> None:
        """Stops new requests, lets in-flight ones finish (up to ``grace``), closes."""
        self.draining = True
        self.epoch.bump()
        deadline = time.monotonic() + grace
        # Polled: the hot path updates a plain counter, not an event.
        while self.outstanding and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self.watcher.close()
        await self.load_reports.close()
        if self._models_read is not None:
            self._models_read.cancel()
        self.detector.forget(self)
        await self.pool.close()
        # The address may have rejoined (a new Endpoint) while this one drained.
        if _gauge_owner.get((self.cluster, self.address)) is self:
            del _gauge_owner[(self.cluster, self.address)]
            with contextlib.suppress(KeyError):
                metrics.ENDPOINT_HEALTHY.remove(self.cluster, self.address)
                metrics.ENDPOINT_REPORTED_KV_CACHE.remove(self.cluster, self.address)
                metrics.UPSTREAM_CONNECTIONS.remove(self.cluster, self.address)
                for state in ("running", "waiting"):
                    metrics.ENDPOINT_REPORTED_REQUESTS.remove(self.cluster, self.address, state)


class Cluster:
    """Model servers that serve the same models, from static addresses and DNS names."""

    def __init__(self, name: str, config: ClusterConfig, max_message_bytes: int) -> None:
        self.name = name
        self.config = config
        self.max_message_bytes = max_message_bytes
        self.endpoints: dict[str, Endpoint] = {}
        self.epoch = Epoch()
        """Moves whenever one of its endpoints' health changes, or one joins or leaves."""
        self.outlier = OutlierDetector(name, config.outlier_detection, self.endpoints, self.epoch)
        self.watched_models: set[str] = set()
        self._removed: set[asyncio.Task[None]] = set()
        self.closed = False
        self.tls_files: CertificateFiles | None = config.tls.files() if config.tls else None

    def _credentials(self) -> grpc.ChannelCredentials | None:
        return None if self.tls_files is None else self.tls_files.channel_credentials()

    def reconfigure(self, config: ClusterConfig, grace: float) -> None:
        """Takes a new config; addresses change on the next ``refresh``. New TLS,
        reconnect, connect-timeout, keepalive or connection-pool settings replace every
        endpoint's connections (the old ones drain); a new idle timeout alone applies
        to the connections open (the idle sweep reads it from the cluster)."""
        tls_changed = config.tls != self.config.tls
        connections_changed = (
            config.reconnect_backoff != self.config.reconnect_backoff
            or _pool_shape(config) != _pool_shape(self.config)
            or config.connect_timeout_seconds != self.config.connect_timeout_seconds
            or config.keepalive_seconds != self.config.keepalive_seconds
            or config.keepalive_timeout_seconds != self.config.keepalive_timeout_seconds
        )
        self.config = config
        self.outlier.config = config.outlier_detection
        for endpoint in self.endpoints.values():
            endpoint.load_reports.follow(config.load_report_interval_seconds)
        if tls_changed:
            self.tls_files = config.tls.files() if config.tls else None
        if tls_changed or connections_changed:
            self._replace_channels(grace)

    async def close_idle_connections(self, now: float) -> None:
        """Closes its endpoints' connections (beyond the first) that carried no call for
        ``connection_pool.idle_timeout_seconds`` by ``now``; run every second.

        Every endpoint's idle connections are taken out before any is closed: nothing
        awaits between, so an endpoint that leaves (DNS) or is replaced (reload,
        rotated certificates) while they close is never swept, and a second costs one
        pass over the endpoints however many there are."""
        idle_timeout = self.config.connection_pool.idle_timeout_seconds
        if idle_timeout is None:
            return
        idle: list[Connection] = []
        for endpoint in self.endpoints.values():
            idle += endpoint.pool.take_idle(idle_timeout, now)
        if idle:
            metrics.UPSTREAM_CONNECTION_IDLE_TIMEOUTS.labels(self.name).inc(len(idle))
            await close_connections(idle)

    def check_certificates(self, grace: float) -> None:
        """Rebuilds the channels when the certificate files changed (a rotated Secret)."""
        if self.tls_files is not None and self.tls_files.changed():
            log.info("cluster %s: certificates changed; reconnecting", self.name)
            self._replace_channels(grace)

    def _replace_channels(self, grace: float) -> None:
        for address, old in list(self.endpoints.items()):
            endpoint = self._endpoint(address)
            # The same model server: what it was known to serve holds until its new
            # health stream has it read again (else, for that moment, unknown would
            # count as capable and a tool request could land where it is refused).
            endpoint.capabilities = old.capabilities
            endpoint.adapters = old.adapters
            self._follow(endpoint)
            self.endpoints[address] = endpoint
            self._drain(old, grace)
        self.epoch.bump()

    def _endpoint(self, address: str) -> Endpoint:
        return Endpoint(
            self.name,
            address,
            self.config,
            self.max_message_bytes,
            self._credentials(),
            self.outlier,
        )

    def _follow(self, endpoint: Endpoint) -> None:
        """Starts watching a new endpoint's health and load."""
        endpoint.watcher.watch(self.watched_models)
        endpoint.load_reports.follow(self.config.load_report_interval_seconds)

    def _drain(self, endpoint: Endpoint, grace: float) -> None:
        task = asyncio.get_running_loop().create_task(endpoint.drain_and_close(grace))
        self._removed.add(task)
        task.add_done_callback(self._removed.discard)

    def watch(self, models: set[str]) -> None:
        """The model names routes send here; every endpoint watches their health."""
        self.watched_models = set(models)
        for endpoint in self.endpoints.values():
            endpoint.watcher.watch(self.watched_models)

    async def refresh(self, grace: float) -> None:
        """Resolves the configured addresses; new endpoints join, vanished ones drain."""
        wanted: list[str] = []
        for entry in self.config.endpoints:
            if entry.startswith(DNS_SCHEME):
                wanted += await _resolve(entry.removeprefix(DNS_SCHEME), known=self._known(entry))
            else:
                wanted.append(entry)
        if self.closed:  # removed by a reload while we were resolving
            return
        for address in wanted:
            if address not in self.endpoints:
                endpoint = self._endpoint(address)
                self._follow(endpoint)
                self.endpoints[address] = endpoint
                self.epoch.bump()
                log.info("cluster %s: endpoint %s joined", self.name, address)
        for address in set(self.endpoints) - set(wanted):
            endpoint = self.endpoints.pop(address)
            self.epoch.bump()
            log.info("cluster %s: endpoint %s left; draining", self.name, address)
            self._drain(endpoint, grace)

    def _known(self, entry: str) -> list[str]:
        """Addresses currently in use for a DNS entry (kept if a lookup fails)."""
        port = entry.rsplit(":", 1)[1]
        return [a for a in self.endpoints if a.rsplit(":", 1)[1] == port]

    async def close(self, grace: float = 0.0) -> None:
        """Drains every endpoint (in-flight requests get ``grace`` seconds) and closes."""
        self.closed = True
        endpoints = list(self.endpoints.values())
        self.endpoints.clear()
        self.epoch.bump()
        await asyncio.gather(*(e.drain_and_close(grace) for e in endpoints), *self._removed)


def _pool_shape(config: ClusterConfig) -> tuple[int, int]:
    """The connection-pool settings that its connections are made with."""
    pool = config.connection_pool
    return pool.max_concurrent_streams, pool.max_connections


async def _resolve(name: str, known: list[str]) -> list[str]:
    host, port = name.rsplit(":", 1)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM
        )
    except OSError as error:
        log.warning("cannot resolve %s (%s); keeping %d known endpoints", name, error, len(known))
        return known
    addresses = []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if address not in addresses:
            addresses.append(address)
    return sorted(addresses)
