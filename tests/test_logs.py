"""Logs: `--log-format json` writes one JSON object per line with each request's fields,
and the router's `access_log: false` drops its per-request line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fleet import Fleet

from switchyard import Client, NotFoundError


def _route(server_address: str) -> dict[str, Any]:
    return {
        "clusters": {"pool": {"endpoints": [server_address]}},
        "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
    }


def test_json_logs_are_one_object_per_line_with_each_requests_fields(fleet: Fleet) -> None:
    json_logs = ["--log-format", "json"]
    server = fleet.modelserver(
        "server",
        {"backend": {"kind": "scripted", "models": [{"id": "m", "reply": "one two three"}]}},
        extra_args=json_logs,
    )
    router = fleet.router(_route(server.address), extra_args=json_logs)
    with Client(router.address, max_retries=0) as client:
        assert client.generate("m", "x").text == "one two three"
        with pytest.raises(NotFoundError):
            client.generate("nope", "x")
    # Stopped (drained), every line is written: all of them must parse.
    assert router.stop() == 0 and server.stop() == 0
    records = {}
    for process in (server, router):
        lines = process.log().splitlines()
        assert lines, process.name
        parsed = [json.loads(line) for line in lines]  # fails on any non-JSON line
        assert all({"time", "level", "logger", "message"} <= set(r) for r in parsed)
        records[process.name] = [r for r in parsed if r["message"].startswith("request ")]
    [served] = records[server.name]
    assert served["level"] == "INFO"
    assert (served["method"], served["model"], served["code"]) == ("Generate", "m", "OK")
    assert served["completion_tokens"] == 3 and "finish" in served
    assert {"prompt_tokens", "total_ms"} <= set(served)
    routed = {r["code"]: r for r in records[router.name]}
    assert set(routed) == {"OK", "NOT_FOUND"}
    assert (routed["OK"]["method"], routed["OK"]["model"]) == ("Generate", "m")
    assert routed["OK"]["attempts"] == 1 and "total_ms" in routed["OK"]
    assert routed["NOT_FOUND"]["model"] == "unknown"  # a bounded name, never the one asked


def test_access_log_false_drops_the_routers_request_lines(fleet: Fleet) -> None:
    server = fleet.scripted("server", [{"id": "m", "reply": "hello"}])
    quiet = fleet.router({**_route(server.address), "access_log": False}, label="quiet")
    loud = fleet.router(_route(server.address), label="loud")  # the default, for contrast
    for router in (quiet, loud):
        with Client(router.address, max_retries=0) as client:
            for _ in range(3):
                assert client.generate("m", "x").text == "hello"
            with pytest.raises(NotFoundError):
                client.generate("nope", "x")
    # Stopped, each router has written every line it ever will.
    assert quiet.stop() == 0 and loud.stop() == 0
    assert loud.log().count(" request method=") == 4
    assert " request method=" not in quiet.log()
    assert "router listening on" in quiet.log()  # it logs at INFO, just not each request
