"""The fleet state's pure parts, in this process: what the router reads from request and
response bytes, cache keys and entries, the memory cache, budget periods and ledgers,
and the config that selects them. (The shared behaviour across routers and a real
Redis is in test_fleet.py.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from switchyard.v1 import llm_service_pb2 as pb
from switchyard_common.configfile import describe_validation_error
from switchyard_common.status import StatusError
from switchyard_router.config import RouterConfig, load_router_config
from switchyard_router.fleet import Ask, KeyLimits
from switchyard_router.fleet.budget import BudgetExhaustedError, LocalBudgets, current_periods
from switchyard_router.fleet.cache import (
    CacheRecorder,
    MemoryCache,
    cache_directives,
    cache_key,
    decode_entry,
    encode_entry,
)
from switchyard_router.fleet.config import TokenBudgetConfig
from switchyard_router.fleet.local import LocalFleetState
from switchyard_router.request_path import wire

REPO = Path(__file__).resolve().parents[1]

# --- reading the wire -----------------------------------------------------------------


def _sampling(**fields: Any) -> wire.RequestSampling:
    include = fields.pop("include_token_ids", False)
    request = pb.GenerateRequest(
        model="m", prompt="p", sampling=pb.SamplingParams(**fields), include_token_ids=include
    )
    return wire.read_sampling(request.SerializeToString())


def test_greedy_or_seeded_requests_are_deterministic_and_others_are_not() -> None:
    assert _sampling(temperature=0).deterministic
    assert _sampling(temperature=0.7, seed=3).deterministic
    assert _sampling(seed=0).deterministic  # a seed of 0 is still a seed
    assert not _sampling().deterministic  # unset: the model's default
    assert not _sampling(temperature=0.2).deterministic


def test_sampling_facts_are_read_from_the_bytes() -> None:
    facts = _sampling(max_tokens=12, logprobs=0)
    assert (facts.max_tokens, facts.logprobs, facts.include_token_ids) == (12, True, False)
    assert facts.wants_tokens
    assert _sampling(include_token_ids=True).wants_tokens
    assert not _sampling(max_tokens=1).wants_tokens
    assert _sampling().max_tokens is None


def test_malformed_request_bytes_are_refused() -> None:
    with pytest.raises(wire.MalformedRequestError):
        wire.read_sampling(b"\x22\x05ab")  # sampling says 5 bytes, 2 follow


def test_token_ids_are_counted_and_cut_out_of_stream_messages() -> None:
    message = pb.StreamGenerateResponse(
        text=" two words", tokens=[pb.Token(id=1), pb.Token(id=2)], model="m"
    )
    data = message.SerializeToString()
    assert wire.read_stream_tokens(data) == (2, len(" two words"))
    stripped = pb.StreamGenerateResponse.FromString(wire.without_tokens(data))
    assert not stripped.tokens
    assert (stripped.text, stripped.model) == (" two words", "m")
    plain = pb.StreamGenerateResponse(text="x").SerializeToString()
    assert wire.without_tokens(plain) is plain


def test_the_finish_reason_is_read_from_the_bytes() -> None:
    last = pb.StreamGenerateResponse(finish_reason=pb.FINISH_REASON_LENGTH).SerializeToString()
    assert wire.read_finish_reason(last, wire.STREAM_FINISH_FIELD) == pb.FINISH_REASON_LENGTH
    delta = pb.StreamGenerateResponse(text="x").SerializeToString()
    assert wire.read_finish_reason(delta, wire.STREAM_FINISH_FIELD) == 0


# --- cache keys and entries ------------------------------------------------------------


def test_cache_keys_differ_by_method_scope_route_and_request() -> None:
    request = pb.GenerateRequest(model="m", prompt="p").SerializeToString()
    base = cache_key(False, "alice", "m\ncpu/m/0/1", request)
    assert base == cache_key(False, "alice", "m\ncpu/m/0/1", request)
    assert base != cache_key(True, "alice", "m\ncpu/m/0/1", request)
    assert base != cache_key(False, "bob", "m\ncpu/m/0/1", request)
    assert base != cache_key(False, "alice", "m\ncpu/m2/0/1", request)  # targets changed
    assert base != cache_key(False, "alice", "m\ncpu/m/0/1", request + b"\x30\x01")
    # The parts are length-prefixed: moving a boundary changes the key.
    assert cache_key(False, "ab", "c", b"") != cache_key(False, "a", "bc", b"")


def test_a_strict_and_a_plain_tool_request_do_not_share_a_cache_entry() -> None:
    """A strict tool may be answered differently (held to its schema, or refused), so
    the request's bytes, which key the cache, carry ``Tool.strict``."""

    def asking(strict: bool) -> bytes:
        tool = pb.Tool(name="f", parameters='{"type": "object"}', strict=strict)
        return pb.GenerateRequest(model="m", prompt="p", tools=[tool]).SerializeToString()

    assert cache_key(False, "", "m", asking(True)) != cache_key(False, "", "m", asking(False))


def test_cache_control_directives_are_read_from_metadata() -> None:
    assert cache_directives([("cache-control", "No-Cache, max-age=0")]) >= {"no-cache"}
    assert cache_directives([("other", "no-cache")]) == frozenset()


def test_entries_round_trip_and_are_not_replayed_as_the_other_kind() -> None:
    messages = [b"one", b"", b"three"]
    entry = encode_entry(True, messages)
    assert decode_entry(entry, streaming=True) == messages
    assert decode_entry(entry, streaming=False) is None
    assert decode_entry(encode_entry(False, [b"answer"]), streaming=False) == [b"answer"]


def _finished(text: str) -> bytes:
    return pb.GenerateResponse(text=text, finish_reason=pb.FINISH_REASON_STOP).SerializeToString()


def test_only_whole_answers_that_ended_well_and_fit_are_kept() -> None:
    recorder = CacheRecorder(b"k", 60, "m", streaming=False, max_bytes=1024)
    recorder.add(_finished("fine"))
    assert recorder.entry() is not None
    failed = CacheRecorder(b"k", 60, "m", streaming=False, max_bytes=1024)
    failed.add(pb.GenerateResponse(finish_reason=pb.FINISH_REASON_ERROR).SerializeToString())
    assert failed.entry() is None
    big = CacheRecorder(b"k", 60, "m", streaming=False, max_bytes=16)
    big.add(_finished("far too long for the limit"))
    assert big.entry() is None
    cut = CacheRecorder(b"k", 60, "m", streaming=True, max_bytes=1024)
    cut.add(pb.StreamGenerateResponse(text="no last message").SerializeToString())
    assert cut.entry() is None


def test_the_memory_cache_drops_the_least_recently_used_past_its_bounds() -> None:
    cache = MemoryCache(max_entries=2, max_bytes=1024)
    cache.put(b"a", b"1", 60)
    cache.put(b"b", b"2", 60)
    assert cache.get(b"a") == b"1"  # now b is the least recently used
    cache.put(b"c", b"3", 60)
    assert (cache.get(b"a"), cache.get(b"b"), cache.get(b"c")) == (b"1", None, b"3")
    by_size = MemoryCache(max_entries=10, max_bytes=1024)
    by_size.put(b"x", b"x" * 600, 60)
    by_size.put(b"y", b"y" * 600, 60)
    assert by_size.get(b"x") is None and by_size.get(b"y") is not None


def test_a_memory_cache_entry_expires_after_its_ttl() -> None:
    cache = MemoryCache(max_entries=10, max_bytes=1024)
    cache.put(b"gone", b"v", 0)  # already past its TTL
    assert cache.get(b"gone") is None
    assert len(cache) == 0


# --- budgets ---------------------------------------------------------------------------


def test_budget_periods_are_utc_days_and_months() -> None:
    budget = TokenBudgetConfig(per_day=100, per_month=1000)
    day, month = current_periods(budget, dt.datetime(2025, 12, 31, 23, 0, tzinfo=dt.UTC))
    assert (day.name, day.id, day.budget, day.seconds_left) == ("day", "2025-12-31", 100, 3600)
    assert (month.name, month.id, month.seconds_left) == ("month", "2025-12", 3600)
    (february,) = current_periods(
        TokenBudgetConfig(per_month=5), dt.datetime(2024, 2, 1, tzinfo=dt.UTC)
    )
    assert february.seconds_left == 29 * 86_400  # a leap year


def test_a_budget_reserves_settles_and_renews_with_the_period() -> None:
    budgets = LocalBudgets()
    now = dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC)
    periods = current_periods(TokenBudgetConfig(per_day=100), now)
    assert budgets.reserve("k", periods, 60, partial=False) == 60
    with pytest.raises(BudgetExhaustedError) as caught:
        budgets.reserve("k", periods, 50, partial=False)  # 40 left: not enough for 50
    assert caught.value.left == 40
    assert budgets.reserve("k", periods, 50, partial=True) == 40  # a stream takes what is left
    budgets.settle("k", periods, -55)  # the first used 5 of its 60
    assert budgets.extend("k", periods, 100) == 55
    with pytest.raises(BudgetExhaustedError):
        budgets.extend("k", periods, 1)
    tomorrow = current_periods(TokenBudgetConfig(per_day=100), now + dt.timedelta(days=1))
    assert budgets.reserve("k", tomorrow, 100, partial=False) == 100
    budgets.settle("k", periods, -100)  # yesterday's late settlement: left alone
    with pytest.raises(BudgetExhaustedError):
        budgets.reserve("k", tomorrow, 1, partial=False)


async def test_a_cached_answer_reserves_no_budget_and_a_refusal_takes_no_request() -> None:
    fleet = LocalFleetState(MemoryCache(10, 1024))
    limits = KeyLimits.of("k", 2, None, None, None, TokenBudgetConfig(per_day=10))
    assert limits is not None
    fleet.store(b"key", b"answer", 60, "m")
    hit = await fleet.admit(Ask(limits, reserve=10, cache_key=b"key"))
    assert (hit.cached, hit.granted) == (b"answer", 0)
    with pytest.raises(StatusError) as caught:
        await fleet.admit(Ask(limits, reserve=11))  # more than the day's budget
    assert caught.value.details.reason == "BUDGET_EXHAUSTED"
    # The refused request did not use the second of the two requests a minute.
    assert (await fleet.admit(Ask(limits, reserve=10))).granted == 10
    with pytest.raises(StatusError) as rated:
        await fleet.admit(Ask(limits))
    assert rated.value.details.reason == "RATE_LIMITED"


def test_a_reload_that_keeps_a_keys_rates_keeps_its_buckets() -> None:
    fleet = LocalFleetState()
    before = KeyLimits.of("k", 1, None, None, None, None)
    after_budget = KeyLimits.of("k", 1, None, None, None, TokenBudgetConfig(per_day=5))
    after_rate = KeyLimits.of("k", 2, None, None, None, None)
    assert before is not None and after_budget is not None and after_rate is not None
    fleet.admit_now(Ask(before))
    with pytest.raises(StatusError):
        fleet.admit_now(Ask(after_budget))  # same rate: the same (empty) bucket
    fleet.admit_now(Ask(after_rate))  # a new rate: a new, full bucket


# --- config ----------------------------------------------------------------------------

_BASE: dict[str, Any] = {
    "clusters": {"pool": {"endpoints": ["127.0.0.1:1"]}},
    "routes": [{"model": "m", "targets": [{"cluster": "pool"}]}],
}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"limits_backend": "redis"}, "limits_backend: redis needs a redis: section"),
        ({"response_cache": {"backend": "redis"}}, "response_cache.backend: redis needs"),
        ({"redis": {"url": "http://user:hunter2@redis:6379"}}, "redis://, rediss:// or unix://"),
        (
            {"redis": {"url": "redis://redis:6379", "tls": {}}},
            "tls: needs a rediss:// url",
        ),
    ],
)
def test_fleet_settings_are_validated_at_start(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RouterConfig.model_validate({**_BASE, **settings})
    described = describe_validation_error(caught.value)  # what the router logs
    assert message in described
    assert "hunter2" not in described  # a URL's password is never echoed


def test_the_fleet_example_is_in_the_readme_and_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = REPO / "deploy/examples/router-fleet.yaml"
    assert example.read_text().split("\n", 1)[1] in (REPO / "README.md").read_text()
    (tmp_path / "password").write_text("from-a-secret\n")  # what the Secret would mount
    monkeypatch.setenv("REDIS_DIR", str(tmp_path))
    config = load_router_config(example)
    assert config.limits_backend == "redis" and config.redis is not None
    assert config.redis.password() == "from-a-secret"
    assert config.response_cache.backend == "redis"
    assert config.auth is not None and config.auth.keys[0].token_budget is not None
    assert config.routes[0].cache is not None and config.routes[0].cache.scope == "key"
