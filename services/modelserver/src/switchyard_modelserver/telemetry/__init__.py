"""What the model server reports about itself: Prometheus metrics (``metrics``), each
request's spans, metrics and access-log line (``request_telemetry``) and ORCA load
reports for the routers (``load_reporting``).
"""
