"""Prometheus metrics: scraped over HTTP, parsed, and moved by exactly what was sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet import Fleet, scrape, value
from processes import free_port

from switchyard import Client, InvalidArgumentError, NotFoundError


@pytest.fixture
def fleet(workdir: Path, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    group = Fleet(workdir, request.node.name)
    yield group
    group.stop()


def test_counters_move_by_exactly_the_requests_sent(fleet: Fleet) -> None:
    server_metrics, router_metrics = free_port(), free_port()
    server = fleet.scripted(
        "server",
        [{"id": "m", "reply": "one two three"}],
        metrics_listen=f"127.0.0.1:{server_metrics}",
    )
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{router_metrics}",
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    before_server, before_router = scrape(server_metrics), scrape(router_metrics)
    with Client(router.address, max_retries=0) as client:
        for _ in range(5):
            client.generate("m", "x")
        for _ in range(3):
            list(client.stream("m", "x"))
        with pytest.raises(InvalidArgumentError):
            client.generate("m", "x", temperature=-1)
        with pytest.raises(NotFoundError):
            client.generate("not-a-model", "x")
    with Client(server.address, max_retries=0) as direct, pytest.raises(NotFoundError):
        direct.generate("made-up-name", "x")
    # A server records a request just after answering it: wait for the last one.
    deadline = time.monotonic() + 5
    while True:
        after_server, after_router = scrape(server_metrics), scrape(router_metrics)
        last = ("switchyard_modelserver_requests_total", "Generate", "unknown", "NOT_FOUND")
        labels = dict(zip(("method", "model", "code"), last[1:], strict=True))
        if value(after_server, last[0], **labels) > value(before_server, last[0], **labels):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)

    def moved(before: dict, after: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
        return value(after, name, **labels) - value(before, name, **labels)

    ms = "switchyard_modelserver_requests_total"
    assert moved(before_server, after_server, ms, method="Generate", model="m", code="OK") == 5
    assert (
        moved(before_server, after_server, ms, method="StreamGenerate", model="m", code="OK") == 3
    )
    assert (
        moved(
            before_server, after_server, ms, method="Generate", model="m", code="INVALID_ARGUMENT"
        )
        == 1
    )
    # An unknown name is counted under a bounded label, not as a new series.
    assert (
        moved(before_server, after_server, ms, method="Generate", model="unknown", code="NOT_FOUND")
        == 1
    )
    assert (
        moved(before_server, after_server, "switchyard_modelserver_output_tokens_total", model="m")
        == 8 * 3
    )
    assert value(after_server, "switchyard_modelserver_model_ready", model="m") == 1
    assert value(after_server, "switchyard_modelserver_in_flight_requests", model="m") == 0

    rr = "switchyard_router_requests_total"
    assert moved(before_router, after_router, rr, method="Generate", model="m", code="OK") == 5
    assert (
        moved(before_router, after_router, rr, method="StreamGenerate", model="m", code="OK") == 3
    )
    assert (
        moved(
            before_router, after_router, rr, method="Generate", model="m", code="INVALID_ARGUMENT"
        )
        == 1
    )
    assert (
        moved(before_router, after_router, rr, method="Generate", model="unknown", code="NOT_FOUND")
        == 1
    )
    assert (
        value(
            after_router,
            "switchyard_router_endpoint_healthy",
            cluster="pool",
            endpoint=server.address,
        )
        == 1
    )
    names = {name for name, _ in after_router}
    assert "switchyard_router_request_duration_seconds_bucket" in names


def test_streams_the_caller_leaves_are_counted_cancelled_not_ok(fleet: Fleet) -> None:
    router_metrics = free_port()
    server = fleet.scripted("server", [{"id": "m", "reply": "a " * 200, "token_delay_ms": 20}])
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{router_metrics}",
            "clusters": {"pool": {"endpoints": [server.address]}},
            "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
        }
    )
    before = scrape(router_metrics)
    with Client(router.address, max_retries=0) as client:
        for _ in range(5):
            with client.stream("m", "x") as stream:
                next(stream)  # then leave
    name = "switchyard_router_requests_total"
    labels = {"method": "StreamGenerate", "model": "m"}
    deadline = time.monotonic() + 5
    while (
        value(scrape(router_metrics), name, code="CANCELLED", **labels)
        - value(before, name, code="CANCELLED", **labels)
        < 5
    ):
        assert time.monotonic() < deadline, scrape(router_metrics)
        time.sleep(0.05)
    after = scrape(router_metrics)
    assert value(after, name, code="OK", **labels) == value(before, name, code="OK", **labels)


def test_a_request_the_caller_leaves_still_counts_its_prompt_tokens(fleet: Fleet) -> None:
    server_metrics = free_port()
    server = fleet.scripted(
        "server",
        [{"id": "m", "reply": "a " * 200, "token_delay_ms": 20}],
        metrics_listen=f"127.0.0.1:{server_metrics}",
    )
    name, labels = "switchyard_modelserver_input_tokens_total", {"model": "m"}
    before = value(scrape(server_metrics), name, **labels)
    with Client(server.address, max_retries=0) as client:
        for _ in range(3):
            with client.stream("m", "four words of prompt") as stream:
                next(stream)  # then leave, long before the usage in the last message
    deadline = time.monotonic() + 5
    while value(scrape(server_metrics), name, **labels) - before < 3 * 4:
        assert time.monotonic() < deadline, scrape(server_metrics)
        time.sleep(0.05)
    assert value(scrape(server_metrics), name, **labels) - before == 3 * 4


def test_a_failover_moves_the_retries_counter_by_one(fleet: Fleet) -> None:
    router_metrics = free_port()
    broken = fleet.scripted("broken", [{"id": "m", "fail_after_tokens": 0}])
    server = fleet.scripted("server", [{"id": "m", "reply": "fine"}])
    router = fleet.router(
        {
            "metrics_listen": f"127.0.0.1:{router_metrics}",
            "clusters": {
                "first": {"endpoints": [broken.address]},
                "second": {"endpoints": [server.address]},
            },
            "routes": [
                {
                    "model": "m",
                    "targets": [{"cluster": "first"}, {"cluster": "second", "priority": 1}],
                }
            ],
        }
    )
    before = scrape(router_metrics)
    with Client(router.address, max_retries=0) as client:
        assert client.generate("m", "x").text == "fine"  # the first attempt failed
    after = scrape(router_metrics)
    retries = "switchyard_router_retries_total"
    assert value(after, retries, model="m") - value(before, retries, model="m") == 1
    requests = "switchyard_router_requests_total"
    labels = {"method": "Generate", "model": "m", "code": "OK"}
    assert value(after, requests, **labels) - value(before, requests, **labels) == 1
