"""Prometheus metrics: scraped over HTTP, parsed, and moved by exactly what was sent."""

from __future__ import annotations

import asyncio
import time

import pytest
from fleet import Fleet, endpoint_view
from processes import free_port, wait_until
from scrape import Samples, scrape, value

from switchyard import AsyncClient, Client, InvalidArgumentError, NotFoundError


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


FALLBACK = {"cluster": "second", "priority": 1}


def _moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_time_to_first_token_and_per_token_histograms_observe_every_request(
    fleet: Fleet,
) -> None:
    # First token after 120 ms, then one every 30 ms: no observation can be smaller.
    model = {"id": "m", "reply": "a b c d e f", "first_token_delay_ms": 120, "token_delay_ms": 30}
    server = fleet.scripted("server", [model], metrics=True)
    address = server.metrics_address
    assert address
    ttft = "switchyard_modelserver_time_to_first_token_seconds"
    per_token = "switchyard_modelserver_time_per_output_token_seconds"
    before = scrape(address)
    with Client(server.address, max_retries=0) as client:
        for _ in range(3):
            assert len(list(client.stream("m", "x"))) >= 2
    # Recorded as each request ends, just after its answer.
    wait_until(
        lambda: all(
            _moved(before, scrape(address), f"{name}_count", model="m") >= 3
            for name in (ttft, per_token)
        ),
        "three observations in each histogram",
    )
    after = scrape(address)
    for name, floor, below in ((ttft, 0.12, "0.1"), (per_token, 0.03, "0.025")):
        assert _moved(before, after, f"{name}_count", model="m") == 3, name
        assert _moved(before, after, f"{name}_sum", model="m") >= 3 * floor, name
        # Every observation lands above the injected delay: the lower buckets stay put.
        assert _moved(before, after, f"{name}_bucket", model="m", le=below) == 0, name
        assert _moved(before, after, f"{name}_bucket", model="m", le="+Inf") == 3, name


async def test_queue_depth_counts_the_requests_waiting_for_a_model(fleet: Fleet) -> None:
    slow = {"id": "q", "reply": " ".join(["word"] * 50), "token_delay_ms": 100, "concurrency": 1}
    server = fleet.scripted("server", [slow], metrics=True)
    address = server.metrics_address
    assert address

    def gauge(name: str) -> float:
        return value(scrape(address), f"switchyard_modelserver_{name}", model="q")

    async with AsyncClient(server.address, max_retries=0, timeout=60) as client:
        holder = client.stream("q", "x")
        await anext(holder)  # generating: holds the model's only slot

        async def wait_in_queue() -> None:
            async for _ in client.stream("q", "x"):
                pass

        waiting = [asyncio.create_task(wait_in_queue()) for _ in range(2)]
        await asyncio.to_thread(
            wait_until, lambda: gauge("queue_depth") == 2, "two requests waiting in the queue"
        )
        assert gauge("in_flight_requests") == 1
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await holder.aclose()
    await asyncio.to_thread(
        wait_until,
        lambda: gauge("queue_depth") == 0 and gauge("in_flight_requests") == 0,
        "the queue and the model empty again",
    )


def test_an_ejection_moves_the_ejections_counter_and_the_healthy_gauge(fleet: Fleet) -> None:
    flaky = fleet.scripted("flaky", [{"id": "m", "reply": "x", "fail_after_tokens": 0}])
    good = fleet.scripted("good", [{"id": "m", "reply": "good"}])
    outlier = {"consecutive_failures": 3, "base_ejection_seconds": 120}  # ejected throughout
    router = fleet.router(
        {
            "clusters": {
                "first": {"endpoints": [flaky.address], "outlier_detection": outlier},
                "second": {"endpoints": [good.address]},
            },
            "routes": [
                {
                    "model": "m",
                    "targets": [{"cluster": "first"}, {"cluster": "second", "priority": 1}],
                }
            ],
        },
        metrics=True,
    )
    assert router.metrics_address
    healthy = "switchyard_router_endpoint_healthy"
    first = {"cluster": "first", "endpoint": flaky.address}
    before = scrape(router.metrics_address)
    assert value(before, healthy, **first) == 1
    with Client(router.address, max_retries=0) as client:
        assert {client.generate("m", "x").text for _ in range(6)} == {"good"}
    assert endpoint_view(router, flaky.address).ejections == 1
    after = scrape(router.metrics_address)
    assert _moved(before, after, "switchyard_router_ejections_total", **first) == 1
    assert value(after, healthy, **first) == 0  # out of rotation while ejected
    assert value(after, healthy, cluster="second", endpoint=good.address) == 1


def test_a_resumed_stream_moves_the_resumes_counter(fleet: Fleet) -> None:
    words = "one two three four five six seven eight"
    models = [{"id": "m", "reply": words, "token_delay_ms": 100}]
    a, b = fleet.scripted("a", models), fleet.scripted("b", models)
    router = fleet.router(
        {
            "clusters": {"first": {"endpoints": [a.address]}, "second": {"endpoints": [b.address]}},
            "routes": [
                {
                    "model": "m",
                    "resume": True,
                    "targets": [{"cluster": "first"}, {"cluster": "second", "priority": 1}],
                }
            ],
        },
        metrics=True,
    )
    assert router.metrics_address
    before = scrape(router.metrics_address)
    with Client(router.address, max_retries=0, timeout=30) as client:
        stream = client.stream("m", "x")
        chunks = [next(stream)]  # from a, the first choice
        a.process.kill()
        chunks += list(stream)
    assert "".join(c.text for c in chunks) == words
    assert chunks[-1].resumes == 1
    after = scrape(router.metrics_address)
    assert _moved(before, after, "switchyard_router_resumes_total", model="m") == 1
    assert _moved(before, after, "switchyard_router_retries_total", model="m") == 1
