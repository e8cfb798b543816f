"""What both services do around serving: telemetry up before the first request, and
the stop that SIGTERM or SIGINT asks for (each service then drains its own way)."""

from __future__ import annotations

import asyncio
import signal

from switchyard_common import tracing
from switchyard_common.metrics_server import start_metrics_server


def start_telemetry(service_name: str, metrics_listen: str | None) -> None:
    """Tracing as the ``OTEL_*`` environment asks (``service_name`` unless it names
    one) and, with ``metrics_listen``, the Prometheus /metrics endpoint."""
    tracing.configure(service_name)
    if metrics_listen:
        start_metrics_server(metrics_listen)


def stop_requested() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets (call from the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
