"""Outlier detection on the router's own clusters and endpoints: the ejection cap,
un-ejection on a fresh SERVING, the back-off multiplier, and the epoch that tells
the pickers to count again (health set as the health watch sets it; no connection
is made)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import REGISTRY

from switchyard_router.config import ClusterConfig, OutlierDetectionConfig
from switchyard_router.load_balancing.picker import Picker, RequestView, Target
from switchyard_router.upstream.endpoints import Cluster, Endpoint, EndpointState

MakeCluster = Callable[..., Awaitable[tuple[Cluster, list[Endpoint]]]]


@pytest.fixture
async def cluster() -> AsyncIterator[MakeCluster]:
    """Makes a cluster of ``size`` endpoints, each SERVING model ``m``, with these
    outlier-detection settings (one failure ejects); closes them after."""
    made: list[Cluster] = []

    async def make(size: int, **outlier: object) -> tuple[Cluster, list[Endpoint]]:
        config = ClusterConfig(
            endpoints=[f"10.0.0.{i}:1" for i in range(1, size + 1)],
            outlier_detection=OutlierDetectionConfig.model_validate(
                {"consecutive_failures": 1, **outlier}
            ),
        )
        group = Cluster("pool", config, 1 << 20)
        made.append(group)
        await group.refresh(0)
        for endpoint in group.endpoints.values():
            endpoint.set_model_health("m", serving=True, fresh=True)
        return group, list(group.endpoints.values())

    yield make
    for group in made:
        await group.close()


async def test_outlier_detection_never_ejects_past_max_ejection_percent(
    cluster: MakeCluster,
) -> None:
    group, endpoints = await cluster(4, max_ejection_percent=50)
    overflows_before = _overflow_metric()
    for endpoint in endpoints:
        endpoint.record_failure("connection refused")
    assert [e.ejected() for e in endpoints] == [True, True, False, False]
    assert (group.outlier.ejected_count(), group.outlier.max_ejected()) == (2, 2)
    assert group.outlier.overflows == 2
    # ... and operators see the refused ejections (README, Metrics).
    assert _overflow_metric() - overflows_before == 2


def _overflow_metric() -> float:
    sample = REGISTRY.get_sample_value(
        "switchyard_router_ejections_overflow_total", {"cluster": "pool"}
    )
    return sample or 0.0


async def test_one_endpoint_may_always_be_ejected_unless_the_percent_is_zero(
    cluster: MakeCluster,
) -> None:
    group, [a, b] = await cluster(2, max_ejection_percent=10)
    a.record_failure("x")
    b.record_failure("x")
    assert (a.ejected(), b.ejected(), group.outlier.max_ejected()) == (True, False, 1)
    _, [c] = await cluster(1, max_ejection_percent=0)
    c.record_failure("x")
    assert not c.ejected()


async def test_a_fresh_serving_ends_an_ejection_and_keeps_the_multiplier(
    cluster: MakeCluster,
) -> None:
    _, [a] = await cluster(1, base_ejection_seconds=30, max_ejection_seconds=120)
    a.record_failure("connection refused")
    assert a.state() is EndpointState.EJECTED and a.ejection.ejected_until > 0
    a.set_model_health("m", serving=True)  # the same stream saying it again: no news
    assert a.ejected()
    a.set_unreachable("m", "connection refused")
    a.set_model_health("m", serving=True, fresh=True)  # the first report after a reconnect
    assert a.state() is EndpointState.HEALTHY and a.ejection.ejected_until == 0
    a.record_success()  # sooner after its return than its last back-off: not forgiven
    a.record_failure("connection refused")
    assert a.ejection.ejections == 2 and a.ejection.backoff == 60  # doubled


async def test_serving_after_not_serving_ends_an_ejection_too(cluster: MakeCluster) -> None:
    _, [a] = await cluster(1, base_ejection_seconds=30)
    a.record_failure("per-try timeout")
    a.set_model_health("m", serving=False)
    assert a.ejected()
    a.set_model_health("m", serving=True)
    assert not a.ejected()


async def test_without_uneject_on_health_an_ejection_lasts_its_back_off(
    cluster: MakeCluster,
) -> None:
    _, [a] = await cluster(
        1, base_ejection_seconds=30, successful_active_health_check_uneject_host=False
    )
    a.record_failure("connection refused")
    a.set_unreachable("m", "connection refused")
    a.set_model_health("m", serving=True, fresh=True)
    assert a.ejected()


async def test_a_pick_sees_every_health_change_through_the_clusters_epoch(
    cluster: MakeCluster,
) -> None:
    group, [a, b, c] = await cluster(3, base_ejection_seconds=30)
    picker = Picker([Target("pool", "m", 0, 1, group.endpoints, group.epoch)], "round_robin")
    view = RequestView("m")
    assert [(h.healthy, h.panic) for h in picker.health()] == [(3, False)]
    b.set_unreachable("m", "connection refused")
    c.record_failure("connection refused")
    assert [(h.healthy, h.panic) for h in picker.health()] == [(1, True)]
    chosen = {picker.pick(view).endpoint for _ in range(10)}  # type: ignore[union-attr]
    assert chosen == {a, c}  # panic: the connected ones, ejected c included
    c.set_unreachable("m", "connection refused")
    c.set_model_health("m", serving=True, fresh=True)
    b.set_model_health("m", serving=True, fresh=True)
    assert [(h.healthy, h.panic) for h in picker.health()] == [(3, False)]
    await group.refresh(0)  # unchanged addresses: nothing moves
    group.config = group.config.model_copy(update={"endpoints": ["10.0.0.1:1"]})
    await group.refresh(0)  # two leave
    assert [(h.healthy, h.endpoints) for h in picker.health()] == [(1, 1)]


async def test_a_health_change_in_one_priority_moves_the_load_of_every_priority(
    cluster: MakeCluster,
) -> None:
    near_group, near = await cluster(2, base_ejection_seconds=30, max_ejection_percent=100)
    far_group, [far] = await cluster(1, base_ejection_seconds=30)
    picker = Picker(
        [
            Target("near", "m", 0, 1, near_group.endpoints, near_group.epoch),
            Target("far", "m", 1, 1, far_group.endpoints, far_group.epoch),
        ],
        "round_robin",
    )
    near[1].record_failure("connection refused")  # P=0 half healthy: 70% stay, 30% spill
    assert [(h.load, h.panic) for h in picker.health()] == [(70, False), (30, False)]
    far.set_unreachable("m", "connection refused")  # only P=1's cluster moved
    assert [(h.load, h.panic) for h in picker.health()] == [(100, False), (0, True)]
    near[0].record_failure("connection refused")  # nothing healthy: total panic
    assert [(h.load, h.panic) for h in picker.health()] == [(100, True), (0, True)]
