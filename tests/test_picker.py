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
)
from switchyard_router.upstream.endpoints import Endpoint

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
async def test_lower_priority_only_when_the_first_has_no_healthy_endpoint(
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
