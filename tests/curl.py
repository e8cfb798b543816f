"""HTTP requests made with the curl binary: the raw status line, headers and body a
plain HTTP client sees, chunked uploads and server-sent events included."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def curl(
    url: str, body: dict[str, Any] | str | None = None, *headers: str, http2: bool = False
) -> tuple[int, str, str]:
    """(status, headers, body) of one request made with curl (a POST when it has a body;
    ``http2``: HTTP/2 without TLS, by prior knowledge, the headers' first line says so)."""
    command = ["curl", "-sS", "-N", "-i", url]
    if http2:
        command.append("--http2-prior-knowledge")
    if body is not None:
        data = body if isinstance(body, str) else json.dumps(body)
        command += ["-H", "content-type: application/json", "-d", data]
    for header in headers:
        command += ["-H", header]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    head, _, rest = finished.stdout.partition("\n\n")  # text mode: \r\n is \n
    return int(head.split()[1]), head.lower(), rest


def sse_data(body: str) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    return [line[len("data: ") :] for line in body.splitlines() if line.startswith("data: ")]
