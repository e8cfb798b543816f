"""Logging for the services: plain text or one JSON object per line.

``--log-format json`` (or ``SWITCHYARD_LOG_FORMAT=json``) writes each record as
JSON with its time, level, logger, message, any structured fields the code
attached (``extra={"fields": {...}}``) and, when tracing is on, the trace and
span ids, so a log line leads to its trace.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if "trace_id" not in entry:
            entry.update(_current_trace_ids())
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _current_trace_ids() -> dict[str, str]:
    if "opentelemetry" not in sys.modules:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def trace_ids(span: Any) -> dict[str, str]:
    """The ids of ``span`` for a log record's fields (empty without a span)."""
    if span is None:
        return {}
    context = span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def configure(level: str, log_format: str | None = None) -> None:
    """Sets up the root logger on stderr in the chosen format (text by default)."""
    chosen = (log_format or os.environ.get("SWITCHYARD_LOG_FORMAT") or "text").lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
