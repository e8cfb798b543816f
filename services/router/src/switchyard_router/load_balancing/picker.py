"""Pickers: which endpoint each attempt of a request goes to.

A picker is a pure, synchronous function of a route's targets, a small view of
the request (:class:`RequestView`) and the endpoints' states and loads, to one
endpoint. It does no I/O and imports nothing of gRPC: the attempt loop calls it
once per attempt, a benchmark calls it in a tight loop, and a native data plane
can call the same logic.

The decisions, in Envoy's order:

1. **Priority** (Envoy's priority levels): each priority's *health* is its
   healthy share of endpoints times the route's ``overprovisioning_factor`` (1.4),
   as an integer percent capped at 100; the priorities' healths summed and capped
   at 100 are the *normalized total health*. Each priority takes its health divided
   by the normalized total health of the requests, lowest number first, until 100%
   is handed out: the *priority load*. So a priority whose healthy share stays at or
   above 1 / 1.4 (~72%) takes everything, and as it loses endpoints its requests
   spill to the next priority in proportion (half healthy: 70% stay, 30% spill).
2. **Weight**: among that priority's targets with an eligible endpoint, one at
   random in proportion to its weight (canaries, A/B splits).
3. **Policy**: among that target's eligible endpoints, the route's ``policy``
   chooses (:data:`POLICIES`).

Eligible: serving the target's model (health says SERVING), not ejected, not
draining, and not already tried by this request. When the priority drawn has no
eligible endpoint (a retry tried them all), the others are tried in order.

**Panic** (Envoy's ``healthy_panic_threshold``): only when the normalized total
health is below 100 (the route as a whole lacks healthy endpoints) is a priority
whose healthy share is below the threshold in panic: its share of the requests
spreads over its *connected* endpoints (health SERVING, ejected ones included)
rather than piling onto its few healthy ones. While another priority makes up
for it, no priority panics and the ejected get nothing. When every priority is
in panic (*total panic*: no healthy endpoint at all, say), each priority's load is
its share of the route's connected endpoints, so every connected endpoint takes
an equal part (Envoy counts all hosts here; the router's panic never sends to
an endpoint that is unreachable or not serving, so it counts those it sends
to). Only when none is connected either are endpoints whose health is not known
yet (just added, or serving no health service) tried, rather than fail. Health
and loads are counted again only when a cluster's :class:`Epoch` moved, so a
pick costs the same with 64 endpoints as with 2.

**Adapter affinity**: a request naming a LoRA adapter goes, when the policy can
choose among them, to the eligible endpoints that already hold that adapter in
memory (a replica loads one on its first request, which costs a load and, on
llama.cpp, its cached prompt); only when none is eligible does it go to any.
A hot adapter spreads by itself: a full replica answers RESOURCE_EXHAUSTED, the
retry goes to another, and that one holds the adapter from then on.

**Capabilities**: a model server refuses what its model cannot do (tools, strict
tools, a JSON or grammar response format, chat or a plain prompt: ``capabilities``)
with INVALID_ARGUMENT, which is never retried. On a route whose endpoints' models
differ in what the request needs (``RequestView.needs``), every pass above counts
as eligible only the endpoints whose model has all of it (a model whose
capabilities are not known yet is assumed capable), priorities, weights and panic
unchanged among them. Only when no endpoint anywhere on the route can take it so
does the request go as if it needed nothing, and the model server's refusal names
the field. A route whose endpoints all can do the same needs no scan of the request.

Load (:func:`load_of`) is what the policies that weigh it compare: this router's
requests in flight at an endpoint, plus those of other routers and clients there
(from its model server's last load report: ORCA, ``load_reports``), plus its
waiting requests once more and its KV-cache usage.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from switchyard_router.load_balancing.capabilities import ROUTED
from switchyard_router.load_balancing.hash_ring import HashRing

PolicyName = Literal["least_outstanding", "round_robin", "prefix_affinity"]
DEFAULT_POLICY: PolicyName = "least_outstanding"
DEFAULT_HEALTHY_PANIC_THRESHOLD = 50.0
"""Percent, as Envoy's default."""
DEFAULT_OVERPROVISIONING_FACTOR = 1.4
"""Envoy's default: a priority with at least 1 / 1.4 (~72%) of its endpoints healthy
counts as fully healthy."""
DEFAULT_LOAD_FACTOR = 1.25
"""prefix_affinity's bound: no endpoint holds more than this times the mean number of
requests in flight."""

KV_CACHE_WEIGHT = 2.0
"""A full KV cache weighs as much as this many more requests in flight: the engine
would queue or preempt a new one."""


class ReportedLoad:
    """An endpoint's load as its model server last reported it (ORCA): requests
    running and waiting there, from every router and client, and the share of its
    KV cache in use (0 where the engine does not say). Never changed once made (a
    plain class rather than a frozen dataclass: one is made per response, and
    this costs a third as much)."""

    __slots__ = (
        "in_flight",
        "kv_cache_usage",
        "rps",
        "running",
        "surcharge",
        "utilization",
        "waiting",
    )

    def __init__(
        self,
        running: float = 0.0,
        waiting: float = 0.0,
        kv_cache_usage: float = 0.0,
        utilization: float = 0.0,
        rps: float = 0.0,
    ) -> None:
        self.running = running
        self.waiting = waiting
        self.kv_cache_usage = kv_cache_usage
        self.utilization = utilization
        self.rps = rps
        self.in_flight = running + waiting
        """running + waiting."""
        self.surcharge = waiting + KV_CACHE_WEIGHT * kv_cache_usage
        """What :func:`load_of` adds to the requests in flight: waiting requests once
        more (a queued request waits for every one before it; a running one only
        shares the engine) and the KV-cache usage."""


NO_REPORT = ReportedLoad()
"""An endpoint whose model server has reported nothing (yet)."""


class EndpointView(Protocol):
    """What a picker reads of an endpoint (``endpoints.Endpoint`` is one)."""

    address: str
    outstanding: int
    """Requests in flight to it from this router."""
    reported: ReportedLoad
    """Its model server's last load report (``NO_REPORT`` before the first)."""
    elsewhere: float
    """Requests in flight there from other routers and clients: the last report's
    running and waiting requests, less this router's own when the report came
    (a report is always a little old: this router's own count is exact, and the
    others' change only as fast as reports come)."""

    def serves(self, model: str) -> bool:
        """Healthy for ``model``: takes new requests now."""
        ...

    def may_serve(self, model: str) -> bool:
        """Health for ``model`` not known yet, and not ejected or draining."""
        ...

    def holds_adapter(self, model: str, adapter: str) -> bool:
        """Whether LoRA ``adapter`` of ``model`` is in memory there (as last heard)."""
        ...

    def connected(self, model: str) -> bool:
        """Health says SERVING for ``model`` and not draining, ejected or not: what a
        priority in panic spreads over."""
        ...

    def capabilities_of(self, model: str) -> int:
        """What ``model`` can do there, as a ``capabilities`` bit set (every bit set:
        not known)."""
        ...


class Epoch:
    """Counts the changes to which of a cluster's endpoints are healthy (health
    reports, ejections and their end, endpoints joining, leaving or draining).
    The endpoints bump it; a picker counts healthy endpoints again only when it moved."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        """Something that decides who is healthy changed."""
        self.value += 1


E = TypeVar("E", bound=EndpointView)
E_co = TypeVar("E_co", bound=EndpointView, covariant=True)


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a picker knows of a request: built once per request, cheaply (the
    request's bytes are not parsed for it)."""

    model: str
    """The route's public model name."""
    affinity_key: bytes | None = None
    """A key whose requests should share an endpoint (a session, a prompt prefix:
    ``affinity``); None: no affinity."""
    prompt_bytes: int = 0
    """Size of the request: an upper bound on its prompt's length (about 4 bytes a token)."""
    adapter: str | None = None
    """The LoRA adapter the request names (None: the base model)."""
    needs: int = 0
    """What the request needs of a model (``capabilities`` bits): read only on routes
    whose endpoints differ in it (``Picker.lacking``); 0: anything will do."""


@dataclass(frozen=True, slots=True)
class Target(Generic[E]):
    """A route's target: a cluster's endpoints, and the model's name there."""

    cluster: str
    model: str
    priority: int
    weight: int
    endpoints: Mapping[str, E]
    """The cluster's endpoints by address, kept current as they join and leave."""
    epoch: Epoch | None = None
    """The cluster's :class:`Epoch`; None: count healthy endpoints at every pick."""


@dataclass(frozen=True, slots=True)
class Pick(Generic[E_co]):
    """Where one attempt goes."""

    endpoint: E_co
    model: str
    cluster: str
    panic: bool = False
    """Chosen in panic: the route's normalized total health was below 100 and the
    priority's healthy share below the threshold."""


@dataclass(frozen=True, slots=True)
class PriorityHealth:
    """One priority of a route: how many of its endpoints are healthy, its health and
    share of the requests (Envoy's health score and priority load), and whether it is
    in panic."""

    priority: int
    healthy: int
    endpoints: int
    panic: bool
    health: int = 0
    """Envoy's health score: percent of its endpoints healthy times the
    overprovisioning factor, as an integer capped at 100."""
    load: int = 0
    """Percent of the route's requests it takes (Envoy's priority load)."""


@dataclass(frozen=True, slots=True)
class PriorityLoad:
    """A route's priorities as last counted: each one's health, load and panic, and the
    normalized total health (Envoy's names)."""

    priorities: tuple[PriorityHealth, ...]
    normalized_total_health: int
    """The priorities' health scores summed, capped at 100: below 100 the route as a
    whole lacks healthy endpoints, and a priority below the panic threshold panics."""
    bounds: tuple[int, ...]
    """The loads summed up to each priority: a draw below ``bounds[i]`` (and not below
    the one before) takes the ``i``-th."""

    @property
    def total_panic(self) -> bool:
        """Every priority is in panic: loads follow connected endpoints, not health."""
        return all(p.panic for p in self.priorities)


def priority_load_of(
    counts: Sequence[tuple[int, int, int]],
    overprovisioning_factor: float,
    healthy_panic_threshold: float,
    priorities: Sequence[int] | None = None,
) -> PriorityLoad:
    """Envoy's priority load from each priority's ``(healthy, endpoints, connected)``
    counts, lowest priority first (``priorities``: their numbers; default 0, 1, ...).

    Health, load and the normalized total health are integer percents, as Envoy
    computes them; what rounding leaves goes to the first priority with a load."""
    factor = round(overprovisioning_factor * 100)
    healths = [min(100, factor * healthy // total) if total else 0 for healthy, total, _ in counts]
    normalized = min(100, sum(healths))
    in_panic = [
        normalized < 100 and (100 * healthy / total if total else 0.0) < healthy_panic_threshold
        for healthy, total, _ in counts
    ]
    if all(in_panic):  # total panic: by connected endpoints (see the module's docstring)
        loads = _shares([connected for _, _, connected in counts], sum(c for _, _, c in counts))
    elif normalized == 0:  # nothing healthy and panic off (threshold 0): the first, as Envoy
        loads = [100] + [0] * (len(counts) - 1)
    else:
        loads = _shares(healths, normalized)
    numbers = list(priorities) if priorities is not None else list(range(len(counts)))
    levels = tuple(
        PriorityHealth(number, healthy, total, panic, health, load)
        for number, (healthy, total, _), panic, health, load in zip(
            numbers, counts, in_panic, healths, loads, strict=True
        )
    )
    return PriorityLoad(levels, normalized, tuple(itertools.accumulate(loads)))


def _shares(weights: Sequence[int], whole: int) -> list[int]:
    """100 percent handed out in order, each ``weight * 100 // whole`` while any is
    left; the rest (rounding) to the first with a share. All 0 when ``whole`` is."""
    shares: list[int] = []
    left = 100
    for weight in weights:
        share = min(left, weight * 100 // whole) if whole else 0
        shares.append(share)
        left -= share
    if whole and left:
        first = next((i for i, share in enumerate(shares) if share), 0)
        shares[first] += left
    return shares


class Policy(Protocol):
    """Chooses one of a target's endpoints. A policy object serves one target of one
    route and may keep state between picks (a round-robin position).

    ``eligible`` says whether an endpoint may take this attempt (health, ejection,
    draining, tried already): a policy asks it of the endpoints it considers, so
    that a pick costs about the same with 2 endpoints as with 64.
    """

    def choose(
        self, endpoints: Sequence[E], eligible: Callable[[E], bool], request: RequestView
    ) -> E | None:
        """One of ``endpoints`` that is ``eligible`` for ``request`` (None: none is)."""
        ...


def load_of(endpoint: EndpointView) -> float:
    """An endpoint's load in requests (see the module's docstring)."""
    return endpoint.outstanding + endpoint.elsewhere + endpoint.reported.surcharge


def requests_at(endpoint: EndpointView) -> float:
    """Requests in flight at an endpoint: this router's and, as far as its model
    server last reported, everyone else's."""
    return endpoint.outstanding + endpoint.elsewhere


class LeastOutstanding:
    """The less loaded of two eligible endpoints drawn at random (power of two choices
    on :func:`load_of`): a slow replica gets less, and no herd follows one number."""

    def choose(
        self, endpoints: Sequence[E], eligible: Callable[[E], bool], request: RequestView
    ) -> E | None:
        pair = _draw_two(endpoints, eligible) if len(endpoints) > _FEW else None
        if pair is None:  # few endpoints, or few eligible: draw among the eligible
            candidates = [e for e in endpoints if eligible(e)]
            if len(candidates) <= 1:
                return candidates[0] if candidates else None
            pair = _two_of(candidates)
        a, b = pair
        return b if load_of(b) < load_of(a) else a


_FEW = 4  # endpoints that least_outstanding lists at once (cheaper than drawing)
_DRAWS = 8  # random draws before least_outstanding lists the eligible endpoints


def _draw_two(endpoints: Sequence[E], eligible: Callable[[E], bool]) -> tuple[E, E] | None:
    """Two different eligible endpoints drawn at random from all of them (skipping the
    ineligible is drawing from the eligible), or None after ``_DRAWS`` draws."""
    count = len(endpoints)
    first: E | None = None
    for _ in range(_DRAWS):
        drawn = endpoints[int(random.random() * count)]
        if drawn is first or not eligible(drawn):
            continue
        if first is not None:
            return first, drawn
        first = drawn
    return None


def _two_of(candidates: Sequence[E]) -> tuple[E, E]:
    """Two different ones at random (``random.sample`` costs several times more)."""
    count = len(candidates)
    first = int(random.random() * count)
    second = int(random.random() * (count - 1))
    if second >= first:
        second += 1
    return candidates[first], candidates[second]


class RoundRobin:
    """Each eligible endpoint in turn, whatever its load."""

    def __init__(self) -> None:
        # Router replicas start at different places, so they do not all send
        # their first requests to the same endpoint.
        self._next = random.randrange(1 << 16)

    def choose(
        self, endpoints: Sequence[E], eligible: Callable[[E], bool], request: RequestView
    ) -> E | None:
        count = len(endpoints)
        start = self._next
        for step in range(count):
            index = (start + step) % count
            if eligible(endpoints[index]):
                self._next = index + 1
                return endpoints[index]
        return None


class PrefixAffinity:
    """Requests with the same affinity key go to the same endpoint, unless it is
    loaded past ``load_factor`` times the mean: consistent hashing with bounded
    loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

    The key's endpoint is the first eligible one clockwise from the key on a hash
    ring of the target's endpoints (``hash_ring``), placed by their addresses only:
    every router that knows the same endpoints agrees, with no shared state, and
    a restart changes nothing. An endpoint that joins, leaves or is out of rotation
    moves only the keys it takes or held. An endpoint whose requests in flight
    (:func:`requests_at`) reach its capacity, ``ceil(load_factor * (total + 1) /
    eligible endpoints)``, is passed over for the next one on the ring, so a hot
    key spills onto its neighbours instead of piling onto one replica; since the
    capacity grows with the mean, some endpoint always has room. The bound counts
    requests, as the analysis does: :func:`load_of`'s surcharges (the queue again,
    the KV cache) would make a busy endpoint look busier than its share and move
    conversations off it early; they order least_outstanding's choices instead.

    A request without a key (no session or prefix; or a retry or resume, whose
    picks ``Picker`` makes without one) is placed by least_outstanding, the default.
    """

    def __init__(self, load_factor: float = DEFAULT_LOAD_FACTOR) -> None:
        self.load_factor = load_factor
        self.spills = 0
        """Picks that passed over the key's own endpoint because it was full."""
        self._fallback = LeastOutstanding()
        self._members: Sequence[Any] = ()
        self._ring: HashRing[Any] = HashRing({})

    def choose(
        self, endpoints: Sequence[E], eligible: Callable[[E], bool], request: RequestView
    ) -> E | None:
        key = request.affinity_key
        if key is None:
            return self._fallback.choose(endpoints, eligible, request)
        if endpoints != self._members:  # joined or left: place them (rare)
            self._members = list(endpoints)
            self._ring = HashRing({e.address: e for e in endpoints})
        capacity = self._capacity(endpoints, eligible)
        if capacity is None:
            return None
        first = True
        candidate: E
        for candidate in self._ring.walk(key):
            if eligible(candidate):
                if requests_at(candidate) < capacity:
                    return candidate
                if first:
                    self.spills += 1
                    first = False
        # Not reached: the capacity grows with the eligible endpoints' mean, so one of
        # them is always below it. Kept as a safe answer.
        return self._fallback.choose(endpoints, eligible, request)

    def _capacity(self, endpoints: Sequence[E], eligible: Callable[[E], bool]) -> int | None:
        """``ceil(load_factor * (requests in flight + 1) / endpoints)`` over the eligible
        endpoints (None: none is). The mean is over those that may take the request
        only: over all of a target's endpoints, those out of rotation (idle) would pull
        it down, and once a fifth of them were out (a rolling update of a large pool)
        every eligible endpoint would sit above the bound and every key would lose
        its home."""
        total = 0.0
        count = 0
        for endpoint in endpoints:
            if eligible(endpoint):
                total += endpoint.outstanding + endpoint.elsewhere  # requests_at, inlined
                count += 1
        return math.ceil(self.load_factor * (total + 1) / count) if count else None


POLICIES: Mapping[PolicyName, Callable[[], Policy]] = {
    "least_outstanding": LeastOutstanding,
    "round_robin": RoundRobin,
    "prefix_affinity": PrefixAffinity,
}
"""Every policy a route may name, by its ``policy:`` name."""


class Picker(Generic[E]):
    """One route's picker: priorities, weights, health and panic, then the route's policy."""

    def __init__(
        self,
        targets: Sequence[Target[E]],
        policy: PolicyName = DEFAULT_POLICY,
        healthy_panic_threshold: float = DEFAULT_HEALTHY_PANIC_THRESHOLD,
        *,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        overprovisioning_factor: float = DEFAULT_OVERPROVISIONING_FACTOR,
    ) -> None:
        make: Callable[[], Policy] = POLICIES[policy]
        if policy == "prefix_affinity":
            make = functools.partial(PrefixAffinity, load_factor)
        priorities = sorted({t.priority for t in targets})
        self.groups: tuple[tuple[tuple[Target[E], Policy], ...], ...] = tuple(
            tuple((t, make()) for t in targets if t.priority == priority) for priority in priorities
        )
        self.priorities = tuple(priorities)
        self.healthy_panic_threshold = healthy_panic_threshold
        self.overprovisioning_factor = overprovisioning_factor
        # The route's clusters' epochs (None: a target has none, count at every pick),
        # and the sum of their values when the priorities were last counted, with what
        # was counted. Epochs only grow, so the sum moves whenever one does.
        self._epochs: tuple[Epoch, ...] | None = (
            None
            if any(t.epoch is None for t in targets)
            else tuple({id(t.epoch): t.epoch for t in targets if t.epoch is not None}.values())
        )
        self._counted: tuple[int, PriorityLoad] | None = None
        self._lacking = 0
        self._offered = 0

    def pick(self, request: RequestView, exclude: Collection[E] = ()) -> Pick[E] | None:
        """The endpoint for the next attempt of ``request`` (not one in ``exclude``),
        or None when no endpoint can take it.

        A retry or resume (``exclude`` is not empty) is picked without the request's
        affinity key: the key's endpoint failed it, and its keys' retries spread by
        load rather than pile onto the next endpoint on the ring."""
        if exclude and request.affinity_key is not None:
            request = dataclasses.replace(request, affinity_key=None)
        load = self.priority_load()
        needs = request.needs & self._lacking
        # Some endpoint on the route cannot do what it needs: those that can, if any
        # endpoint's model has it all (else no filtered pass would find one).
        if needs and needs & self._offered == needs:
            chosen = self._pick(request, exclude, load, needs)
            if chosen is not None:
                return chosen
        return self._pick(request, exclude, load, 0)

    @property
    def lacking(self) -> int:
        """The capabilities (``capabilities`` bits) that some endpoint on the route lacks
        for its target's model: 0 when they all can do the same, and a request's needs
        change nothing."""
        self.priority_load()
        return self._lacking

    def _pick(
        self, request: RequestView, exclude: Collection[E], load: PriorityLoad, needs: int
    ) -> Pick[E] | None:
        """:meth:`pick` among the endpoints whose model has ``needs``."""
        levels = load.priorities
        groups = self.groups
        # The priority by its load; when it has no eligible endpoint (a retry tried
        # them), the others in order. Each in panic or not as counted.
        first = 0
        if len(groups) > 1:
            point = random.random() * 100
            bounds = load.bounds
            while first < len(bounds) - 1 and point >= bounds[first]:
                first += 1
        chosen = _pick_in(groups[first], request, exclude, _mode(levels[first]), needs)
        if chosen is not None:
            return chosen
        for index, group in enumerate(groups):
            if index != first:
                chosen = _pick_in(group, request, exclude, _mode(levels[index]), needs)
                if chosen is not None:
                    return chosen
        # Nothing healthy or connected: try endpoints whose health is not known yet
        # (just added, or serving no health service) rather than fail.
        for group in groups:
            chosen = _pick_in(group, request, exclude, _UNKNOWN, needs)
            if chosen is not None:
                return chosen
        return None

    def priority_load(self) -> PriorityLoad:
        """Every priority's health, load and panic state, counted again only when one of
        the route's clusters' epochs moved (or at every call when a target has none)."""
        epochs = self._epochs
        stamp = -1
        if epochs is not None:
            stamp = 0
            for epoch in epochs:
                stamp += epoch.value
            counted = self._counted
            if counted is not None and counted[0] == stamp:
                return counted[1]
        counts = []
        has_all = -1  # what every endpoint's model can do (every bit: none known)
        has_any = 0  # what some endpoint's model can do
        for group in self.groups:
            healthy = total = connected = 0
            for target, _ in group:
                model = target.model
                for endpoint in target.endpoints.values():
                    total += 1
                    healthy += endpoint.serves(model)
                    connected += endpoint.connected(model)
                    has = endpoint.capabilities_of(model)
                    has_all &= has
                    has_any |= has
            counts.append((healthy, total, connected))
        self._lacking = ROUTED & ~has_all
        self._offered = has_any
        load = priority_load_of(
            counts, self.overprovisioning_factor, self.healthy_panic_threshold, self.priorities
        )
        self._counted = (stamp, load)
        return load

    def health(self) -> list[PriorityHealth]:
        """Every priority's healthy share, load and panic state, for operators."""
        return list(self.priority_load().priorities)


_HEALTHY, _CONNECTED, _UNKNOWN = range(3)
"""Which endpoints a pass of the picker considers: healthy ones; connected ones, ejected
included (panic); or those whose health is not known yet."""


def _mode(level: PriorityHealth) -> int:
    """The pass a priority's endpoints are picked in: connected ones in panic."""
    return _CONNECTED if level.panic else _HEALTHY


_Option = tuple[Target[E], Policy, list[E], Callable[[E], bool]]
"""A target with an eligible endpoint: its policy, its endpoints, who is eligible."""


def _pick_in(
    group: tuple[tuple[Target[E], Policy], ...],
    request: RequestView,
    exclude: Collection[E],
    mode: int,
    needs: int = 0,
) -> Pick[E] | None:
    options: list[_Option[E]] = []
    for target, policy in group:
        endpoints = list(target.endpoints.values())
        eligible = _eligibility(target.model, exclude, mode)
        if needs:
            eligible = _capable(target.model, needs, eligible)
        if any(map(eligible, endpoints)):
            options.append((target, policy, endpoints, eligible))
    if not options:
        return None
    target, policy, endpoints, eligible = options[0] if len(options) == 1 else _by_weight(options)
    endpoint = None
    adapter = request.adapter
    if adapter is not None:  # affinity: an endpoint that holds the adapter, if one may
        model = target.model
        endpoint = policy.choose(
            endpoints, lambda e: e.holds_adapter(model, adapter) and eligible(e), request
        )
    if endpoint is None:
        endpoint = policy.choose(endpoints, eligible, request)
    if endpoint is None:
        return None
    return Pick(endpoint, target.model, target.cluster, mode == _CONNECTED)


def _eligibility(model: str, exclude: Collection[E], mode: int) -> Callable[[E], bool]:
    """Whether an endpoint may take the attempt in this pass (``mode``) and was not
    tried already."""
    if mode == _HEALTHY:
        if exclude:
            return lambda e: e.serves(model) and e not in exclude
        return lambda e: e.serves(model)
    if mode == _CONNECTED:
        return lambda e: e.connected(model) and e not in exclude
    return lambda e: e.may_serve(model) and e not in exclude


def _capable(model: str, needs: int, eligible: Callable[[E], bool]) -> Callable[[E], bool]:
    """``eligible``, and its ``model`` there has every capability in ``needs``."""
    return lambda e: e.capabilities_of(model) & needs == needs and eligible(e)


def _by_weight(options: list[_Option[E]]) -> _Option[E]:
    """One option at random, in proportion to its target's weight."""
    point = random.random() * sum(option[0].weight for option in options)
    for option in options:
        point -= option[0].weight
        if point < 0:
            return option
    return options[-1]  # rounding at the very top
