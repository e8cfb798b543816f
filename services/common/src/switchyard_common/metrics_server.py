"""The Prometheus /metrics endpoint both services start (needs the ``server`` extra)."""

from __future__ import annotations

from switchyard_common.configfile import ConfigError


def start_metrics_server(listen: str) -> int:
    """Serves Prometheus metrics on ``host:port`` in a background thread; returns the port."""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"metrics_listen: expected host:port, got {listen!r}")
    try:
        server, _ = start_http_server(int(port), addr=host.strip("[]"))
    except OSError as error:
        raise ConfigError(f"metrics_listen: cannot bind {listen}: {error}") from None
    return int(server.server_port)
