"""Load reports (ORCA) for the routers in front of this model server.

Every generation call ends with the server's load in its trailing metadata
(``endpoint-load-metrics-bin``: a serialized ``xds.data.orca.v3.OrcaLoadReport``,
and the same bytes under ``switchyard-load-report-bin`` for routers on grpcio,
which never see the standard key; the status boundary attaches them, errors
included), and a router may subscribe
to the same report out of band (``xds.service.orca.v3.OpenRcaService/
StreamCoreMetrics``), so that it knows this server's load even while it sends
nothing here. Which fields mean what: ``switchyard_common.load_report``.

The report is the load as the call leaves: its own slot is already free. It is
built from counters the server keeps anyway (each model's queue and slots) and
the backend's :meth:`Backend.load` (KV-cache usage, the engine's own queue), so
it costs a few µs per call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import grpc.aio

from switchyard_common import load_report
from switchyard_modelserver.backends.base import Backend
from switchyard_modelserver.serving.admission import ModelGate

Context = grpc.aio.ServicerContext[Any, Any]
Metadata = tuple[tuple[str, bytes], ...]

_RATE_WINDOW_SECONDS = 10


class RateMeter:
    """Events per second over the last ten seconds, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets = [0] * _RATE_WINDOW_SECONDS
        self._second = int(time.monotonic())

    def _roll(self) -> int:
        now = int(time.monotonic())
        if now != self._second:
            for second in range(max(self._second + 1, now - _RATE_WINDOW_SECONDS + 1), now + 1):
                self._buckets[second % _RATE_WINDOW_SECONDS] = 0
            self._second = now
        return now

    def add(self) -> None:
        self._buckets[self._roll() % _RATE_WINDOW_SECONDS] += 1

    def rate(self) -> float:
        self._roll()
        return sum(self._buckets) / _RATE_WINDOW_SECONDS


class LoadReporter:
    """Builds this server's load report and serves it out of band."""

    def __init__(
        self, gates: Mapping[str, ModelGate], backend: Backend, min_interval: float
    ) -> None:
        self._gates = gates  # the server's own dict: models found later are in it too
        self._backend = backend
        self._min_interval = min_interval
        self._finished = RateMeter()

    def report(self) -> load_report.OrcaLoadReport:
        """The server's load now."""
        running = queued = slots = 0
        for gate in self._gates.values():
            running += gate.running
            queued += gate.waiting
            slots += gate.concurrency
        engine = self._backend.engine_load()
        report = load_report.OrcaLoadReport(
            application_utilization=min(1.0, running / slots) if slots else 0.0,
            rps_fractional=self._finished.rate(),
            named_metrics={
                load_report.RUNNING_REQUESTS: float(max(0, running - engine.waiting)),
                load_report.WAITING_REQUESTS: float(queued + engine.waiting),
                load_report.QUEUE_DEPTH: float(queued),
            },
        )
        if engine.kv_cache_usage is not None:
            report.utilization[load_report.KV_CACHE] = engine.kv_cache_usage
        return report

    def trailers(self) -> Metadata:
        """A finished call's trailing metadata: the load as it leaves."""
        self._finished.add()
        report = self.report().SerializeToString()
        return ((load_report.TRAILER, report), (load_report.COPY_TRAILER, report))

    async def stream_core_metrics(
        self, request: load_report.OrcaLoadReportRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """OpenRcaService.StreamCoreMetrics: the report now, then every
        ``report_interval`` (at least the server's minimum) until the caller leaves."""
        asked = request.report_interval.ToNanoseconds() / 1e9
        interval = max(asked, self._min_interval)
        while True:
            yield self.report().SerializeToString()
            await asyncio.sleep(interval)


def open_rca_handler(reporter: LoadReporter) -> grpc.GenericRpcHandler[Any, Any]:
    """The OpenRcaService's one method, for ``server.add_generic_rpc_handlers``."""
    return grpc.method_handlers_generic_handler(
        load_report.OPEN_RCA_SERVICE,
        {
            "StreamCoreMetrics": grpc.unary_stream_rpc_method_handler(
                reporter.stream_core_metrics,
                request_deserializer=load_report.OrcaLoadReportRequest.FromString,
                response_serializer=None,  # the handler yields serialized reports
            )
        },
    )
