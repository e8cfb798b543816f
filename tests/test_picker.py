"""The picker: priorities, weights, health, policies and tried endpoints, on the
router's own Endpoint objects (their health and load set as the health watch and
the attempt loop set them; no connection is made)."""

from __future__ import annotations

import collections
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import get_args

import pytest
from importcheck import assert_imports_none_of

from switchyard_common.configfile import ConfigError, load_config
from switchyard_router.config import ClusterConfig, RouterConfig
from switchyard_router.load_balancing.picker import (
    POLICIES,
    Picker,
    PolicyName,
    RequestView,
    Target,
    priority_load_of,
)
from switchyard_router.request_path.routing import RouteTable
from switchyard_router.upstream.endpoints import Cluster, Endpoint

REQUEST = RequestView("m")
Make = Callable[..., Endpoint]


@pytest.fixture
async def endpoint() -> AsyncIterator[Make]:
    """Makes endpoints serving model ``m`` (or with no health yet); closes them after."""
    made: list[Endpoint] = []

    def make(address: str, serving: bool | None = True, outstanding: int = 0) -> Endpoint:
        config = ClusterConfig(endpoints=[address])
        made.append(Endpoint("test", address, config, max_message_bytes=1 << 20))
        if serving is not None:
            made[-1].set_model_health("m", serving)
        made[-1].outstanding = outstanding
        return made[-1]

    yield make
    for e in made:
        await e.channel.close(grace=None)


def eject(endpoint: Endpoint) -> None:
    """Fails attempts on it until outlier detection ejects it (health stays SERVING)."""
    for _ in range(endpoint.detector.config.consecutive_failures):
        endpoint.record_failure("test")
    assert endpoint.ejected()


def target(
    *endpoints: Endpoint, cluster: str = "pool", priority: int = 0, weight: int = 1
) -> Target[Endpoint]:
    return Target(cluster, "m", priority, weight, {e.address: e for e in endpoints})


def picks(picker: Picker[Endpoint], count: int) -> list[str]:
    chosen = []
    for _ in range(count):
        pick = picker.pick(REQUEST)
        assert pick is not None
        chosen.append(pick.endpoint.address)
    return chosen


def test_the_picker_imports_nothing_of_grpc() -> None:
    """A native data plane, a benchmark or a test can call it without a gRPC stack."""
    assert_imports_none_of({"grpc", "google"}, "switchyard_router.load_balancing.picker")


def test_every_configurable_policy_has_a_picker() -> None:
    assert set(POLICIES) == set(get_args(PolicyName))


def test_an_unknown_policy_is_refused_naming_the_key_and_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, policy: random, targets: [{cluster: cpu}]}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    message = str(caught.value)
    assert "routes[0].policy" in message or "routes.0.policy" in message
    assert "least_outstanding" in message and "round_robin" in message


def test_the_default_policy_is_least_outstanding(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, targets: [{cluster: cpu}]}]\n"
    )
    assert load_config(path, RouterConfig).routes[0].policy == "least_outstanding"


async def test_least_outstanding_never_picks_the_busiest_endpoint(endpoint: Make) -> None:
    idle = [endpoint(f"10.0.0.{i}:1") for i in range(7)]
    busy = endpoint("10.0.0.9:1", outstanding=10)
    chosen = picks(Picker([target(*idle, busy)], "least_outstanding"), 500)
    assert busy.address not in chosen
    assert set(chosen) == {e.address for e in idle}  # the rest share the load


async def test_least_outstanding_of_two_always_takes_the_less_busy(endpoint: Make) -> None:
    a, b = endpoint("10.0.0.1:1", outstanding=3), endpoint("10.0.0.2:1", outstanding=1)
    assert set(picks(Picker([target(a, b)], "least_outstanding"), 100)) == {b.address}


async def test_least_outstanding_finds_the_few_healthy_endpoints_of_a_large_cluster(
    endpoint: Make,
) -> None:
    down = [endpoint(f"10.0.1.{i}:1", serving=False) for i in range(62)]
    busy, idle = endpoint("10.0.0.1:1", outstanding=2), endpoint("10.0.0.2:1")
    picker = Picker([target(*down[:31], busy, *down[31:], idle)], "least_outstanding")
    assert set(picks(picker, 200)) == {idle.address}
    pick = picker.pick(REQUEST, {idle})
    assert pick is not None and pick.endpoint is busy


async def test_round_robin_takes_each_endpoint_in_turn_whatever_its_load(
    endpoint: Make,
) -> None:
    endpoints = [endpoint(f"10.0.0.{i}:1", outstanding=10 * i) for i in range(3)]
    chosen = picks(Picker([target(*endpoints)], "round_robin"), 30)
    for start in range(len(chosen) - 2):  # any three in a row are all three
        assert sorted(chosen[start : start + 3]) == sorted(e.address for e in endpoints)
    assert len(set(itertools.pairwise(chosen))) == 3  # always in the same order


async def test_round_robin_skips_an_endpoint_that_is_out_of_rotation(endpoint: Make) -> None:
    a, b, c = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1"), endpoint("10.0.0.3:1")
    picker = Picker([target(a, b, c)], "round_robin")
    b.draining = True
    chosen = picks(picker, 10)
    assert b.address not in chosen
    assert collections.Counter(chosen) == {a.address: 5, c.address: 5}


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_a_healthy_first_priority_takes_every_request_until_it_has_none(
    endpoint: Make, policy: PolicyName
) -> None:
    primary, fallback = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1")
    picker = Picker(
        [target(fallback, cluster="cloud", priority=1), target(primary, cluster="cpu")], policy
    )
    assert set(picks(picker, 20)) == {primary.address}
    primary.set_model_health("m", serving=False)
    pick = picker.pick(REQUEST)
    assert pick is not None and (pick.endpoint, pick.cluster) == (fallback, "cloud")


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_weights_split_traffic_between_targets(endpoint: Make, policy: PolicyName) -> None:
    stable, canary = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1")
    picker = Picker(
        [target(stable, cluster="stable", weight=3), target(canary, cluster="canary")], policy
    )
    counts = collections.Counter(picks(picker, 4000))
    # Expected 3000 / 1000; the standard deviation is about 27.
    assert 2850 <= counts[stable.address] <= 3150
    assert counts[stable.address] + counts[canary.address] == 4000


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_tried_endpoints_are_never_picked_again(endpoint: Make, policy: PolicyName) -> None:
    a, b = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1")
    fallback = endpoint("10.0.0.3:1")
    picker = Picker([target(a, b), target(fallback, cluster="cloud", priority=1)], policy)
    tried: set[Endpoint] = set()
    order = []
    for _ in range(3):
        pick = picker.pick(REQUEST, tried)
        assert pick is not None
        tried.add(pick.endpoint)
        order.append(pick.endpoint)
    assert set(order[:2]) == {a, b}  # the first priority, each once
    assert order[2] is fallback  # then the fallback
    assert picker.pick(REQUEST, tried) is None  # then nothing


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_unknown_health_is_tried_only_when_nothing_is_known_healthy(
    endpoint: Make, policy: PolicyName
) -> None:
    known, unknown = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1", serving=None)
    # Even an unknown endpoint of the first priority waits behind a healthy fallback.
    picker = Picker([target(unknown), target(known, cluster="cloud", priority=1)], policy)
    assert set(picks(picker, 20)) == {known.address}
    known.set_unreachable("m", "connection refused")
    assert set(picks(picker, 20)) == {unknown.address}


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_ejected_and_draining_endpoints_get_nothing(
    endpoint: Make, policy: PolicyName
) -> None:
    good, ejected, draining = (endpoint(f"10.0.0.{i}:1") for i in range(3))
    eject(ejected)
    draining.draining = True
    picker = Picker([target(good, ejected, draining)], policy, healthy_panic_threshold=0)
    assert set(picks(picker, 50)) == {good.address}
    good.set_model_health("m", serving=False)
    assert picker.pick(REQUEST) is None  # no panic routing: nothing is healthy


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_below_the_panic_threshold_a_priority_spreads_over_its_ejected_endpoints(
    endpoint: Make, policy: PolicyName
) -> None:
    endpoints = [endpoint(f"10.0.0.{i}:1") for i in range(4)]
    healthy, *others = endpoints
    for ejected in others:
        eject(ejected)
    picker = Picker([target(*endpoints)], policy)  # Envoy's default threshold: 50%
    assert [(h.healthy, h.endpoints, h.panic) for h in picker.health()] == [(1, 4, True)]
    counts = collections.Counter(picks(picker, 400))
    assert set(counts) == {e.address for e in endpoints}  # not all on the one healthy
    pick = picker.pick(REQUEST)
    assert pick is not None and pick.panic
    # Two healthy of four is not below 50%: only the healthy ones, and no panic.
    others[0].set_model_health("m", serving=False)
    others[0].set_model_health("m", serving=True)  # a fresh SERVING ends its ejection
    assert [(h.healthy, h.panic) for h in picker.health()] == [(2, False)]
    assert set(picks(picker, 50)) == {healthy.address, others[0].address}


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_every_endpoint_ejected_but_connected_still_takes_requests(
    endpoint: Make, policy: PolicyName
) -> None:
    a, b = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1")
    eject(a)
    eject(b)
    assert set(picks(Picker([target(a, b)], policy), 50)) == {a.address, b.address}
    assert Picker([target(a, b)], policy, healthy_panic_threshold=0).pick(REQUEST) is None


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_panic_never_picks_an_endpoint_that_is_unreachable_or_not_serving(
    endpoint: Make, policy: PolicyName
) -> None:
    ejected, down, loading = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1"), endpoint("10.0.0.3:1")
    eject(ejected)
    down.set_unreachable("m", "connection refused")
    loading.set_model_health("m", serving=False)
    assert set(picks(Picker([target(ejected, down, loading)], policy), 50)) == {ejected.address}


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_a_healthy_fallback_priority_comes_before_panic(
    endpoint: Make, policy: PolicyName
) -> None:
    primary, fallback = endpoint("10.0.0.1:1"), endpoint("10.0.0.2:1")
    eject(primary)
    picker = Picker([target(primary), target(fallback, cluster="cloud", priority=1)], policy)
    assert set(picks(picker, 20)) == {fallback.address}
    fallback.set_unreachable("m", "connection refused")
    pick = picker.pick(REQUEST)  # no priority has a healthy endpoint: the first one panics
    assert pick is not None and pick.endpoint is primary and pick.panic


@pytest.mark.parametrize(
    ("healthy_percent", "first_load"),
    # Envoy's table (priority levels), P=1 fully healthy: 1.4 x the healthy share, capped.
    [(100, 100), (72, 100), (71, 99), (50, 70), (25, 35), (0, 0)],
)
def test_a_priority_takes_its_health_and_the_next_takes_the_rest(
    healthy_percent: int, first_load: int
) -> None:
    load = priority_load_of([(healthy_percent, 100, 100), (100, 100, 100)], 1.4, 50)
    assert [p.load for p in load.priorities] == [first_load, 100 - first_load]
    assert load.normalized_total_health == 100
    assert not any(p.panic for p in load.priorities)  # P=1 makes up for P=0: no panic


def test_loads_are_normalized_when_the_route_as_a_whole_lacks_health() -> None:
    # Envoy's example: 20% healthy at each of two levels, health 28 each, total 56.
    load = priority_load_of([(20, 100, 100), (20, 100, 100)], 1.4, 0)
    assert load.normalized_total_health == 56
    assert [(p.health, p.load, p.panic) for p in load.priorities] == [(28, 50, False)] * 2
    # Three levels, the third making up what the first two lack.
    load = priority_load_of([(20, 100, 100), (20, 100, 100), (100, 100, 100)], 1.4, 50)
    assert [p.load for p in load.priorities] == [28, 28, 44]
    # A larger overprovisioning factor keeps more at the first level.
    load = priority_load_of([(50, 100, 100), (100, 100, 100)], 2.0, 50)
    assert [p.load for p in load.priorities] == [100, 0]


def test_only_the_priorities_below_the_threshold_panic_and_only_below_full_total_health() -> None:
    # 1 of 5 healthy (health 28) and 1 of 2 (health 70): total 98, below 100.
    load = priority_load_of([(1, 5, 5), (1, 2, 2)], 1.4, 50)
    assert load.normalized_total_health == 98
    assert [(p.load, p.panic) for p in load.priorities] == [(29, True), (71, False)]
    assert not load.total_panic


def test_in_total_panic_each_connected_endpoint_takes_an_equal_share() -> None:
    # Nothing healthy; 1 of 4 connected at P=0, 3 of 3 at P=1.
    load = priority_load_of([(0, 4, 1), (0, 3, 3)], 1.4, 50)
    assert load.total_panic
    assert [p.load for p in load.priorities] == [25, 75]
    # With panic off (threshold 0) there is nothing to share: the first level, as Envoy.
    load = priority_load_of([(0, 4, 1), (0, 3, 3)], 1.4, 0)
    assert [(p.load, p.panic) for p in load.priorities] == [(100, False), (0, False)]


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_a_mostly_ejected_priority_spills_to_the_next_and_never_panics(
    endpoint: Make, policy: PolicyName
) -> None:
    near = [endpoint(f"10.0.0.{i}:1") for i in range(4)]
    far = [endpoint(f"10.0.1.{i}:1") for i in range(2)]
    for ejected in near[1:]:
        eject(ejected)
    picker = Picker(
        [target(*near, cluster="near"), target(*far, cluster="far", priority=1)], policy
    )
    assert [(h.healthy, h.endpoints, h.health, h.load, h.panic) for h in picker.health()] == [
        (1, 4, 35, 35, False),
        (2, 2, 100, 65, False),
    ]
    counts = collections.Counter(picks(picker, 4000))
    assert not counts.keys() & {e.address for e in near[1:]}  # never the ejected
    # 35% expected at P=0's one healthy endpoint; the standard deviation is about 30.
    assert 1280 <= counts[near[0].address] <= 1520
    assert counts[far[0].address] > 0 and counts[far[1].address] > 0
    assert picker.pick(REQUEST).panic is False  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_when_no_priority_can_make_up_for_another_both_panic(
    endpoint: Make, policy: PolicyName
) -> None:
    near = [endpoint(f"10.0.0.{i}:1") for i in range(4)]
    far = [endpoint(f"10.0.1.{i}:1") for i in range(4)]
    for ejected in near[1:] + far[1:]:
        eject(ejected)  # one of four healthy at each: health 35 + 35, below 100
    picker = Picker(
        [target(*near, cluster="near"), target(*far, cluster="far", priority=1)], policy
    )
    assert [(h.health, h.panic) for h in picker.health()] == [(35, True), (35, True)]
    chosen = picks(picker, 800)
    assert set(chosen) == {e.address for e in near + far}  # spread over every connected one
    assert picker.pick(REQUEST).panic  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", get_args(PolicyName))
async def test_a_retry_goes_to_another_priority_when_the_drawn_one_is_all_tried(
    endpoint: Make, policy: PolicyName
) -> None:
    near = [endpoint(f"10.0.0.{i}:1") for i in range(2)]
    far = endpoint("10.0.1.1:1")
    eject(near[1])  # P=0: health 70, P=1 takes 30%
    picker = Picker([target(*near, cluster="near"), target(far, cluster="far", priority=1)], policy)
    for _ in range(50):
        pick = picker.pick(REQUEST, {near[0]})
        assert pick is not None and pick.endpoint is far
        pick = picker.pick(REQUEST, {far})
        assert pick is not None and pick.endpoint is near[0]


async def test_a_routes_overprovisioning_factor_reaches_its_picker(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, overprovisioning_factor: 2, targets: [{cluster: cpu}]}]\n"
    )
    config = load_config(path, RouterConfig)
    clusters = {"cpu": Cluster("cpu", config.clusters["cpu"], 1 << 20)}
    try:
        assert RouteTable(config, clusters).route("m").picker.overprovisioning_factor == 2
    finally:
        await clusters["cpu"].close()


def test_an_overprovisioning_factor_in_envoys_percent_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, overprovisioning_factor: 140, targets: [{cluster: cpu}]}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    assert "overprovisioning_factor" in str(caught.value)
