"""The load report that model servers send and routers read: gRPC's ORCA.

The format is gRPC's standard one, ORCA (Open Request Cost Aggregation, from the
cncf/xds protos): ``xds.data.orca.v3.OrcaLoadReport``, sent two ways: serialized in
every response's trailing metadata under ``endpoint-load-metrics-bin`` (and
``COPY_TRAILER``), and as an out-of-band stream
(``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics``) that a router opens to
each model server so that an idle one stays current too.

What a Switchyard model server fills in:

- ``application_utilization``: the share of its generation slots in use;
- ``rps_fractional``: requests finished per second, recently;
- ``utilization["kv_cache"]``: the share of the KV cache in use, where the engine
  has one (vLLM's block usage; llama.cpp's context in use);
- ``named_metrics``: ``running_requests`` (generating now), ``waiting_requests``
  (queued for the engine: the model server's own queue and the engine's),
  ``queue_depth`` (the model server's own queue alone).

The two messages and the service are declared here, field for field as cncf/xds
declares them (the same package, names and numbers: the same bytes on the wire,
and reflection shows the standard names), rather than imported from the
``xds-protos`` package: that package also installs its own, older copies of the
``opentelemetry.proto`` and ``google.rpc`` modules over the real ones, which
broke the OTLP trace exporter. Where ``xds-protos`` is loaded anyway, its classes
are used.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, duration_pb2, message_factory

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

_REPORT = "xds.data.orca.v3.OrcaLoadReport"
_REQUEST = "xds.service.orca.v3.OrcaLoadReportRequest"
_F = descriptor_pb2.FieldDescriptorProto


def _field(
    name: str, number: int, kind: _F.Type.ValueType, repeated: bool = False, type_name: str = ""
) -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label, json_name=_camel(name))
    if type_name:
        field.type_name = type_name
    return field


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.title() for part in rest)


def _map_entry(name: str) -> descriptor_pb2.DescriptorProto:
    """A map<string, double>'s entry message."""
    return descriptor_pb2.DescriptorProto(
        name=name,
        field=[_field("key", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_DOUBLE)],
        options=descriptor_pb2.MessageOptions(map_entry=True),
    )


def _report_file() -> descriptor_pb2.FileDescriptorProto:
    maps = {"request_cost": 4, "utilization": 5, "named_metrics": 8}
    entries = {name: "".join(p.title() for p in name.split("_")) + "Entry" for name in maps}
    fields = [
        _field("cpu_utilization", 1, _F.TYPE_DOUBLE),
        _field("mem_utilization", 2, _F.TYPE_DOUBLE),
        _field("rps", 3, _F.TYPE_UINT64),
        *(
            _field(name, number, _F.TYPE_MESSAGE, True, f".{_REPORT}.{entries[name]}")
            for name, number in maps.items()
        ),
        _field("rps_fractional", 6, _F.TYPE_DOUBLE),
        _field("eps", 7, _F.TYPE_DOUBLE),
        _field("application_utilization", 9, _F.TYPE_DOUBLE),
    ]
    report = descriptor_pb2.DescriptorProto(
        name="OrcaLoadReport",
        field=sorted(fields, key=lambda f: f.number),
        nested_type=[_map_entry(entries[name]) for name in maps],
    )
    return descriptor_pb2.FileDescriptorProto(
        name="xds/data/orca/v3/orca_load_report.proto",
        package="xds.data.orca.v3",
        message_type=[report],
        syntax="proto3",
    )


def _service_file() -> descriptor_pb2.FileDescriptorProto:
    request = descriptor_pb2.DescriptorProto(
        name="OrcaLoadReportRequest",
        field=[
            _field("report_interval", 1, _F.TYPE_MESSAGE, type_name=".google.protobuf.Duration"),
            _field("request_cost_names", 2, _F.TYPE_STRING, True),
        ],
    )
    service = descriptor_pb2.ServiceDescriptorProto(
        name="OpenRcaService",
        method=[
            descriptor_pb2.MethodDescriptorProto(
                name="StreamCoreMetrics",
                input_type=f".{_REQUEST}",
                output_type=f".{_REPORT}",
                server_streaming=True,
            )
        ],
    )
    return descriptor_pb2.FileDescriptorProto(
        name="xds/service/orca/v3/orca.proto",
        package="xds.service.orca.v3",
        dependency=["xds/data/orca/v3/orca_load_report.proto", duration_pb2.DESCRIPTOR.name],
        message_type=[request],
        service=[service],
        syntax="proto3",
    )


def _message_class(full_name: str, file: descriptor_pb2.FileDescriptorProto) -> Any:
    """The message class of ``full_name`` from the default pool (so that server
    reflection describes it), declaring ``file`` there first unless it is known."""
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(full_name)
    except KeyError:
        pool.Add(file)
        descriptor = pool.FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)


OrcaLoadReport: Any = _message_class(_REPORT, _report_file())
"""``xds.data.orca.v3.OrcaLoadReport``: a protobuf message class."""
OrcaLoadReportRequest: Any = _message_class(_REQUEST, _service_file())
"""``xds.service.orca.v3.OrcaLoadReportRequest``: a protobuf message class."""
