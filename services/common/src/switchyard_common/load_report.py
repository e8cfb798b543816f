"""The names of the load report that model servers send and routers read.

The format is gRPC's standard one, ORCA (``xds.data.orca.v3.OrcaLoadReport``, from
the ``xds-protos`` package), sent two ways: serialized in every response's
trailing metadata under ``endpoint-load-metrics-bin`` (and ``COPY_TRAILER``), and as an out-of-band
stream (``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics``) that a router
opens to each model server so that an idle one stays current too.

What a Switchyard model server fills in:

- ``application_utilization``: the share of its generation slots in use;
- ``rps_fractional``: requests admitted per second, recently;
- ``utilization["kv_cache"]``: the share of the KV cache in use, where the engine
  has one (vLLM's block usage; llama.cpp's context in use);
- ``named_metrics``: ``running_requests`` (generating now), ``waiting_requests``
  (queued for the engine: the model server's own queue and the engine's),
  ``queue_depth`` (the model server's own queue alone).
"""

from __future__ import annotations

TRAILER = "endpoint-load-metrics-bin"
"""Trailing-metadata key of a per-response report (binary: the ``-bin`` suffix)."""
COPY_TRAILER = "switchyard-load-report-bin"
"""The same report again, for routers built on gRPC's C core (grpcio, the Python
router): the core consumes ``endpoint-load-metrics-bin`` for its own load
balancing and never hands it to the application, so the report is sent under
this key too. ORCA-aware proxies (Envoy, xDS clients) read the standard key."""
OPEN_RCA_SERVICE = "xds.service.orca.v3.OpenRcaService"
STREAM_CORE_METRICS = f"/{OPEN_RCA_SERVICE}/StreamCoreMetrics"
"""The out-of-band method: OrcaLoadReportRequest in, a stream of reports out."""

KV_CACHE = "kv_cache"
"""``utilization`` key: the share of the KV cache in use."""
RUNNING_REQUESTS = "running_requests"
WAITING_REQUESTS = "waiting_requests"
QUEUE_DEPTH = "queue_depth"
