"""prefix_affinity and load-weighed picks, on the router's own Endpoint objects (their
health, requests in flight and load reports set as the health watch, the attempt loop
and the load reports set them; no connection is made), and affinity keys read from
real request bytes."""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.configfile import ConfigError, load_config
from switchyard_router.config import ClusterConfig, RouterConfig
from switchyard_router.load_balancing.affinity import AffinityKeys
from switchyard_router.load_balancing.hash_ring import HashRing
from switchyard_router.load_balancing.picker import (
    Picker,
    ReportedLoad,
    RequestView,
    Target,
    load_of,
)
from switchyard_router.upstream.endpoints import Endpoint

Make = Callable[..., Endpoint]
KEYS = [f"conversation {i}".encode() for i in range(400)]


@pytest.fixture
async def endpoint() -> AsyncIterator[Make]:
    """Makes endpoints serving model ``m``; closes them after."""
    made: list[Endpoint] = []

    def make(address: str, outstanding: int = 0) -> Endpoint:
        made.append(Endpoint("test", address, ClusterConfig(endpoints=[address]), 1 << 20))
        made[-1].set_model_health("m", serving=True)
        made[-1].outstanding = outstanding
        return made[-1]

    yield make
    for e in made:
        await e.channel.close(grace=None)


def affinity(*endpoints: Endpoint, load_factor: float = 1.25) -> Picker[Endpoint]:
    target = Target("pool", "m", 0, 1, {e.address: e for e in endpoints})
    return Picker([target], "prefix_affinity", load_factor=load_factor)


def owner(picker: Picker[Endpoint], key: bytes, exclude: set[Endpoint] | None = None) -> str:
    pick = picker.pick(RequestView("m", key), exclude or set())
    assert pick is not None
    return pick.endpoint.address


def owners(picker: Picker[Endpoint], keys: list[bytes] = KEYS) -> dict[bytes, str]:
    return {key: owner(picker, key) for key in keys}


ADDRESSES = [f"10.0.0.{i}:50061" for i in range(1, 6)]


async def test_a_key_goes_to_the_same_endpoint_and_keys_spread(endpoint: Make) -> None:
    picker = affinity(*(endpoint(a) for a in ADDRESSES[:4]))
    first = owners(picker)
    assert owners(picker) == first == owners(picker)
    shares = collections.Counter(first.values())
    assert set(shares) == set(ADDRESSES[:4])
    assert max(shares.values()) < 2 * min(shares.values())  # 100 each, give or take


async def test_two_routers_and_a_restarted_one_agree_without_shared_state(endpoint: Make) -> None:
    # Each router has its own Endpoint objects, listed in its own order.
    one = affinity(*(endpoint(a) for a in ADDRESSES[:4]))
    other = affinity(*(endpoint(a) for a in reversed(ADDRESSES[:4])))
    restarted = affinity(*(endpoint(a) for a in ADDRESSES[:4]))
    assert owners(one) == owners(other) == owners(restarted)


async def test_an_endpoint_that_leaves_moves_only_its_own_keys(endpoint: Make) -> None:
    before = owners(affinity(*(endpoint(a) for a in ADDRESSES[:4])))
    gone = ADDRESSES[3]
    after = owners(affinity(*(endpoint(a) for a in ADDRESSES[:3])))
    for key, address in before.items():
        if address != gone:
            assert after[key] == address
    assert len({after[k] for k, a in before.items() if a == gone}) == 3  # spread, not piled


async def test_an_endpoint_that_joins_takes_a_fair_share_and_nothing_else_moves(
    endpoint: Make,
) -> None:
    before = owners(affinity(*(endpoint(a) for a in ADDRESSES[:4])))
    after = owners(affinity(*(endpoint(a) for a in ADDRESSES)))
    moved = [key for key in KEYS if after[key] != before[key]]
    assert {after[key] for key in moved} == {ADDRESSES[4]}  # only to the newcomer
    assert 0.1 <= len(moved) / len(KEYS) <= 0.3  # about a fifth


async def test_an_endpoint_out_of_rotation_lends_its_keys_and_gets_them_back(
    endpoint: Make,
) -> None:
    pool = [endpoint(a) for a in ADDRESSES[:4]]
    picker = affinity(*pool)
    before = owners(picker)
    pool[0].draining = True  # or ejected, or unhealthy: not eligible
    during = owners(picker)
    assert ADDRESSES[0] not in during.values()
    assert all(during[k] == a for k, a in before.items() if a != ADDRESSES[0])
    pool[0].draining = False
    assert owners(picker) == before


async def test_a_hot_key_spills_once_its_endpoint_is_at_the_bound(endpoint: Make) -> None:
    a, b = endpoint("10.0.0.1:50061"), endpoint("10.0.0.2:50061")
    picker = affinity(a, b)
    hot = KEYS[0]
    home = owner(picker, hot)
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(8):  # eight requests of one key, all still in flight
        pick = picker.pick(RequestView("m", hot))
        assert pick is not None
        pick.endpoint.outstanding += 1
        counts[pick.endpoint.address] += 1
    # ceil(1.25 * 8 / 2) = 5 at home, the rest on the other endpoint.
    assert counts[home] == 5 and sum(counts.values()) == 8
    policy = picker.groups[0][0][1]
    assert getattr(policy, "spills", 0) == 3


@pytest.mark.parametrize("load_factor", [1.0, 1.25, 2.0])
async def test_no_endpoint_ever_passes_the_bound(endpoint: Make, load_factor: float) -> None:
    pool = [endpoint(a) for a in ADDRESSES[:4]]
    picker = affinity(*pool, load_factor=load_factor)
    keys = [KEYS[0]] * 30 + KEYS[1:11]  # a hot key and a few others
    for in_flight, key in enumerate(keys, start=1):
        pick = picker.pick(RequestView("m", key))
        assert pick is not None
        pick.endpoint.outstanding += 1
        bound = math.ceil(load_factor * in_flight / len(pool))
        assert max(e.outstanding for e in pool) <= bound


async def test_a_hot_key_spreads_over_a_large_target_too(endpoint: Make) -> None:
    pool = [endpoint(f"10.0.1.{i}:50061") for i in range(16)]
    picker = affinity(*pool)
    for in_flight in range(1, 65):
        pick = picker.pick(RequestView("m", KEYS[0]))
        assert pick is not None
        pick.endpoint.outstanding += 1
        assert max(e.outstanding for e in pool) <= math.ceil(1.25 * in_flight / 16)
    pool[0].draining = True  # out of rotation: the bound is the others' mean
    for _ in range(16):
        pick = picker.pick(RequestView("m", KEYS[0]))
        assert pick is not None and pick.endpoint is not pool[0]
        pick.endpoint.outstanding += 1
    on_the_others = sum(e.outstanding for e in pool[1:])
    assert max(e.outstanding for e in pool[1:]) <= math.ceil(1.25 * on_the_others / 15)


async def test_a_large_target_keeps_its_keys_home_while_a_quarter_is_out_of_rotation(
    endpoint: Make,
) -> None:
    # A rolling update of 16 replicas, 4 at a time (maxUnavailable 25%): the other 12
    # carry the load evenly, at the mean. Every key with an eligible home stays there:
    # the bound is the mean of the endpoints that may take it, not of all 16.
    pool = [endpoint(f"10.0.2.{i}:50061") for i in range(16)]
    picker = affinity(*pool)
    for out in pool[:4]:
        out.draining = True
    for up in pool[4:]:
        up.outstanding = 4
    ring = HashRing({e.address: e for e in pool})
    for key in KEYS[:40]:
        home = next(e for e in ring.walk(key) if not e.draining)
        assert owner(picker, key) == home.address


async def test_reported_load_counts_in_the_bound(endpoint: Make) -> None:
    a, b = endpoint("10.0.0.1:50061"), endpoint("10.0.0.2:50061")
    picker = affinity(a, b)
    key = KEYS[0]
    home = a if owner(picker, key) == a.address else b
    home.heard(ReportedLoad(running=1, waiting=6))  # another router's requests
    assert owner(picker, key) != home.address
    home.forget_report()
    assert owner(picker, key) == home.address


async def test_retries_and_requests_without_a_key_are_placed_by_least_outstanding(
    endpoint: Make,
) -> None:
    pool = [endpoint(a) for a in ADDRESSES[:3]]
    picker = affinity(*pool)
    key = KEYS[0]
    home = next(e for e in pool if e.address == owner(picker, key))
    # The next endpoint on the ring after the key's own is busy; the third is idle.
    home.draining = True
    successor = next(e for e in pool if e.address == owner(picker, key))
    home.draining = False
    idle = next(e for e in pool if e not in (home, successor))
    successor.outstanding = 5
    assert {owner(picker, key, exclude={home}) for _ in range(50)} == {idle.address}
    home.outstanding = 9  # without a key, the less busy of two: never the busiest
    nokey = [picker.pick(RequestView("m", None)) for _ in range(50)]
    assert {p.endpoint.address for p in nokey if p is not None} == {
        idle.address,
        successor.address,
    }


async def test_load_counts_everyone_s_requests_the_queue_and_the_kv_cache(
    endpoint: Make,
) -> None:
    view = endpoint("10.0.0.1:50061", outstanding=3)
    assert load_of(view) == 3
    view.heard(ReportedLoad(running=2, waiting=0))
    assert load_of(view) == 3  # this router's own count is fresher than the report
    view.heard(ReportedLoad(running=4, waiting=2, kv_cache_usage=0.5))
    assert view.elsewhere == 3  # six there, three of them this router's
    assert load_of(view) == 3 + 3 + 2 + 2 * 0.5  # ours, others', the queue again, KV cache
    view.outstanding = 1  # two of ours finish: the others' stay counted
    assert load_of(view) == 1 + 3 + 2 + 2 * 0.5


async def test_least_outstanding_goes_where_the_reports_say_there_is_room(
    endpoint: Make,
) -> None:
    a, b = endpoint("10.0.0.1:50061"), endpoint("10.0.0.2:50061")
    target = Target("pool", "m", 0, 1, {e.address: e for e in (a, b)})
    picker = Picker([target], "least_outstanding")
    a.heard(ReportedLoad(running=1, waiting=3))
    assert chosen(picker) == {b.address}
    b.heard(ReportedLoad(running=1, waiting=0, kv_cache_usage=1.0))
    a.heard(ReportedLoad(running=1, waiting=0, kv_cache_usage=0.1))
    assert chosen(picker) == {a.address}


def chosen(picker: Picker[Endpoint], count: int = 50) -> set[str]:
    picks = [picker.pick(RequestView("m")) for _ in range(count)]
    return {pick.endpoint.address for pick in picks if pick is not None}


# Affinity keys, from request bytes.

SYSTEM = "You are a careful assistant. Answer in one sentence. " * 8


def chat(*turns: tuple[str, str], model: str = "m") -> bytes:
    messages = [pb.ChatMessage(role=role, content=content) for role, content in turns]
    request = pb.StreamGenerateRequest(
        model=model, messages=messages, sampling=pb.SamplingParams(max_tokens=8)
    )
    return request.SerializeToString()


def prompt(text: str) -> bytes:
    return pb.GenerateRequest(model="m", prompt=text).SerializeToString()


KEYS_OF = AffinityKeys(session_metadata_key="x-session-id", prefix_bytes=1024, block_bytes=64)


def test_every_turn_of_a_conversation_has_its_first_turns_key() -> None:
    first = chat(("system", SYSTEM), ("user", "Document 7: tides. What causes them?"))
    later = chat(
        ("system", SYSTEM),
        ("user", "Document 7: tides. What causes them?"),
        ("assistant", "The moon."),
        ("user", "And the sun?"),
        ("assistant", "It helps."),
        ("user", "Why twice a day?"),
    )
    assert KEYS_OF.key(first, ()) == KEYS_OF.key(later, ()) is not None


def test_conversations_that_share_only_a_system_prompt_have_different_keys() -> None:
    a = chat(("system", SYSTEM), ("user", "Document 1: tides."))
    b = chat(("system", SYSTEM), ("user", "Document 2: volcanoes."))
    assert KEYS_OF.key(a, ()) != KEYS_OF.key(b, ())
    # ...and a different system prompt makes a different key too.
    c = chat(("system", "Be terse."), ("user", "Document 1: tides."))
    assert KEYS_OF.key(a, ()) != KEYS_OF.key(c, ())


def test_a_prompt_keys_on_its_first_whole_blocks() -> None:
    head = "x" * 1024  # prefix_bytes: 16 blocks of 64
    assert KEYS_OF.key(prompt(head + "tail one"), ()) == KEYS_OF.key(prompt(head + "two"), ())
    # Under prefix_bytes, a partial last block does not count...
    assert KEYS_OF.key(prompt("y" * 130), ()) == KEYS_OF.key(prompt("y" * 128 + "zz"), ())
    # ...and a prompt shorter than one block counts whole.
    assert KEYS_OF.key(prompt("short"), ()) != KEYS_OF.key(prompt("shore"), ())
    assert KEYS_OF.key(prompt("short"), ()) != KEYS_OF.key(chat(("user", "short")), ())


def test_a_session_is_the_key_whatever_the_content() -> None:
    session = (("x-session-id", "user-42"),)
    a = chat(("user", "first question"))
    b = prompt("something else entirely")
    assert KEYS_OF.key(a, session) == KEYS_OF.key(b, session)
    assert KEYS_OF.key(a, session) != KEYS_OF.key(a, (("x-session-id", "user-43"),))
    assert KEYS_OF.key(a, session) != KEYS_OF.key(a, ())  # without it: the prefix
    sessions_only = AffinityKeys(session_metadata_key="x-session-id", prefix_bytes=0)
    assert sessions_only.key(a, ()) is None
    assert sessions_only.key(a, session) == KEYS_OF.key(b, session)


def test_requests_without_leading_content_or_unreadable_have_no_key() -> None:
    assert KEYS_OF.key(pb.GenerateRequest(model="m").SerializeToString(), ()) is None
    assert KEYS_OF.key(b"\x0a\x01m\x1a\xff\xff", ()) is None  # a message runs past the end


def test_affinity_settings_need_the_prefix_affinity_policy(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, targets: [{cluster: cpu}], affinity: {load_factor: 1.5}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    assert "affinity: applies only to policy prefix_affinity" in str(caught.value)
    path.write_text(
        "clusters: {cpu: {endpoints: ['127.0.0.1:1']}}\n"
        "routes: [{model: m, policy: prefix_affinity, targets: [{cluster: cpu}],\n"
        "          affinity: {load_factor: 0.9}}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, RouterConfig)
    assert "load_factor" in str(caught.value)
