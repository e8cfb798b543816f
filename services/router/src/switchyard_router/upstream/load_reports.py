"""Load reports from model servers (ORCA), kept per endpoint for the picker.

Two sources, both ``xds.data.orca.v3.OrcaLoadReport`` (names in
``switchyard_common.load_report``):

- the trailing metadata of every response, read by the attempt loop (``proxy``)
  when an attempt ends, then dropped: the caller never sees it. grpcio's core
  keeps the standard ``endpoint-load-metrics-bin`` to itself, so this router reads
  the copy Switchyard model servers send beside it (``switchyard-load-report-bin``);
- an out-of-band stream per endpoint (``OpenRcaService.StreamCoreMetrics``), opened
  here when the cluster sets ``load_report_interval_seconds``, so that an endpoint
  this router sends nothing to stays current (another router or client may be
  loading it).

Each report replaces the endpoint's last one (``Endpoint.heard``: what it counts
beyond this router's own requests in flight is other routers' and clients'); the
stream ending (a model server gone, restarting) forgets it. A model server without the
service answers UNIMPLEMENTED once and is asked no more: the trailers remain.
On the request path a report costs one small parse (about 1 µs) per attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError

from switchyard_common import load_report
from switchyard_router.load_balancing.picker import ReportedLoad
from switchyard_router.upstream.backoff import Backoff

if TYPE_CHECKING:
    from switchyard_router.upstream.endpoints import Endpoint

log = logging.getLogger("switchyard.router.load_reports")

TRAILERS = (load_report.TRAILER, load_report.COPY_TRAILER)
"""Trailing-metadata keys of load reports: the router's, never relayed to a caller."""
_READABLE = load_report.COPY_TRAILER  # the one grpcio lets through
_parse = load_report.OrcaLoadReport.FromString


def parse(data: bytes) -> ReportedLoad | None:
    """The load a serialized OrcaLoadReport describes (None: not one)."""
    try:
        report = _parse(data)
    except DecodeError:
        return None
    named = report.named_metrics
    return ReportedLoad(
        running=named.get(load_report.RUNNING_REQUESTS, 0.0),
        waiting=named.get(load_report.WAITING_REQUESTS, 0.0),
        kv_cache_usage=report.utilization.get(load_report.KV_CACHE, 0.0),
        utilization=report.application_utilization,
        rps=report.rps_fractional,
    )


def from_trailers(trailers: Iterable[Any] | None) -> ReportedLoad | None:
    """The load report in a call's trailing metadata, if it has one."""
    for key, value in trailers or ():
        if key == _READABLE and isinstance(value, bytes):
            return parse(value)
    return None


class LoadReportWatcher:
    """Keeps one endpoint's ``reported`` load current from its out-of-band stream."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._stream = endpoint.channel.unary_stream(
            load_report.STREAM_CORE_METRICS,
            request_serializer=load_report.OrcaLoadReportRequest.SerializeToString,
            response_deserializer=None,  # bytes: ``parse`` reads them
        )
        self._task: asyncio.Task[None] | None = None
        self._interval: float | None = None

    def follow(self, interval: float | None) -> None:
        """Follows the stream, asking for a report every ``interval`` seconds
        (None: not at all; the trailers remain). A new interval restarts it."""
        if interval == self._interval:
            return
        self._interval = interval
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if interval is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._follow(interval), name=f"load reports {self._endpoint.address}"
            )

    async def _follow(self, interval: float) -> None:
        every = duration_pb2.Duration()
        every.FromNanoseconds(int(interval * 1e9))
        request = load_report.OrcaLoadReportRequest(report_interval=every)
        endpoint = self._endpoint
        backoff = Backoff(endpoint.reconnect_backoff)  # the cluster's, as its health watch's
        while True:
            call = self._stream(request)
            try:
                with endpoint.pool.background_stream():
                    async for message in call:
                        reported = parse(message)
                        if reported is not None:
                            endpoint.heard(reported)
                        backoff.reset()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info(
                        "%s sends no out-of-band load reports; using its response trailers",
                        endpoint.address,
                    )
                    return
            finally:
                call.cancel()
            endpoint.forget_report()  # gone or restarting: its last report is stale
            await backoff.wait()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
