"""What the router and the model server share and callers never need.

The listener (TLS, connection limits), YAML config files, status errors and
the one way to end a call with them, the Prometheus endpoint, logging and
OpenTelemetry tracing. The SDK (``switchyard``, package ``switchyard-client``)
holds the contract's stubs and what a caller needs; this package depends on it,
never the other way round.
"""
