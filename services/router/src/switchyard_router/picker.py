"""Pickers: which endpoint each attempt of a request goes to.

A picker is a pure, synchronous function of a route's targets, a small view of
the request (:class:`RequestView`) and the endpoints' states and loads, to one
endpoint. It does no I/O and imports nothing of gRPC: the attempt loop calls it
once per attempt, a benchmark calls it in a tight loop, and a native data plane
can call the same logic.

The decisions, in Envoy's order:

1. **Priority**: the lowest priority number with an eligible endpoint in any of
   its targets; higher numbers are fallbacks.
2. **Weight**: among that priority's targets with an eligible endpoint, one at
   random in proportion to its weight (canaries, A/B splits).
3. **Policy**: among that target's eligible endpoints, the route's ``policy``
   chooses (:data:`POLICIES`).

Eligible: serving the target's model (health says SERVING), not ejected, not
draining, and not already tried by this request.

**Panic** (Envoy's ``healthy_panic_threshold``): when the healthy share of the
priority in use falls below the route's threshold, its requests spread over that
priority's *connected* endpoints (health SERVING, ejected ones included) rather
than pile onto the few healthy ones. When no priority has a healthy endpoint, the
first priority with a connected one is used, in panic. Only when none is
connected either are endpoints whose health is not known yet (just added, or
serving no health service) tried, rather than fail. The healthy share is counted
again only when a cluster's :class:`Epoch` moved, so a pick costs the same with
64 endpoints as with 2.

**Adapter affinity**: a request naming a LoRA adapter goes, when the policy can
choose among them, to the eligible endpoints that already hold that adapter in
memory (a replica loads one on its first request, which costs a load and, on
llama.cpp, its cached prompt); only when none is eligible does it go to any.
A hot adapter spreads by itself: a full replica answers RESOURCE_EXHAUSTED, the
retry goes to another, and that one holds the adapter from then on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

PolicyName = Literal["least_outstanding", "round_robin"]
DEFAULT_POLICY: PolicyName = "least_outstanding"
DEFAULT_HEALTHY_PANIC_THRESHOLD = 50.0
"""Percent, as Envoy's default."""


class EndpointView(Protocol):
    """What a picker reads of an endpoint (``endpoints.Endpoint`` is one)."""

    address: str
    outstanding: int
    """Requests in flight to it from this router."""

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
    """A key whose requests should share an endpoint (a session, a prompt prefix);
    None: no affinity."""
    prompt_bytes: int = 0
    """Size of the request: an upper bound on its prompt's length (about 4 bytes a token)."""
    adapter: str | None = None
    """The LoRA adapter the request names (None: the base model)."""


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
    """Chosen in panic: the priority's healthy share was below the threshold."""


@dataclass(frozen=True, slots=True)
class PriorityHealth:
    """One priority of a route: how many of its endpoints are healthy, and whether
    that share puts it in panic."""

    priority: int
    healthy: int
    endpoints: int
    panic: bool


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


class LeastOutstanding:
    """The less loaded of two eligible endpoints drawn at random (power of two choices
    on requests in flight): a slow replica gets less, and no herd follows one number."""

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
        return b if b.outstanding < a.outstanding else a


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


POLICIES: Mapping[PolicyName, Callable[[], Policy]] = {
    "least_outstanding": LeastOutstanding,
    "round_robin": RoundRobin,
}
"""Every policy a route may name, by its ``policy:`` name."""


class Picker(Generic[E]):
    """One route's picker: priorities, weights, health and panic, then the route's policy."""

    def __init__(
        self,
        targets: Sequence[Target[E]],
        policy: PolicyName = DEFAULT_POLICY,
        healthy_panic_threshold: float = DEFAULT_HEALTHY_PANIC_THRESHOLD,
    ) -> None:
        make = POLICIES[policy]
        priorities = sorted({t.priority for t in targets})
        self.groups: tuple[tuple[tuple[Target[E], Policy], ...], ...] = tuple(
            tuple((t, make()) for t in targets if t.priority == priority) for priority in priorities
        )
        self.priorities = tuple(priorities)
        self.healthy_panic_threshold = healthy_panic_threshold
        # Per priority: its clusters' epochs (None: a target has none, count every
        # time), and the sum of their values when its health was last counted with
        # what was counted. Epochs only grow, so the sum moves whenever one does.
        self._epochs: tuple[tuple[Epoch, ...] | None, ...] = tuple(
            None
            if any(t.epoch is None for t, _ in group)
            else tuple(t.epoch for t, _ in group if t.epoch is not None)
            for group in self.groups
        )
        self._counted: list[tuple[int, PriorityHealth] | None] = [None] * len(self.groups)

    def pick(self, request: RequestView, exclude: Collection[E] = ()) -> Pick[E] | None:
        """The endpoint for the next attempt of ``request`` (not one in ``exclude``),
        or None when no endpoint can take it."""
        # The lowest priority with a healthy endpoint; in panic, over its connected ones.
        for index, group in enumerate(self.groups):
            health = self.health_of(index)
            if health.healthy == 0:
                continue
            mode = _CONNECTED if health.panic else _HEALTHY
            chosen = _pick_in(group, request, exclude, mode)
            if chosen is not None:
                return chosen
        # No healthy endpoint anywhere: the first priority in panic with a connected one.
        for index, group in enumerate(self.groups):
            if self.health_of(index).panic:
                chosen = _pick_in(group, request, exclude, _CONNECTED)
                if chosen is not None:
                    return chosen
        # Nothing connected: try endpoints whose health is not known yet (just
        # added, or serving no health service) rather than fail.
        for group in self.groups:
            chosen = _pick_in(group, request, exclude, _UNKNOWN)
            if chosen is not None:
                return chosen
        return None

    def health_of(self, index: int) -> PriorityHealth:
        """The healthy share of the ``index``-th priority, counted again only when one
        of its clusters' epochs moved (or at every call when a target has none)."""
        epochs = self._epochs[index]
        stamp = -1
        if epochs is not None:
            stamp = 0
            for epoch in epochs:
                stamp += epoch.value
            counted = self._counted[index]
            if counted is not None and counted[0] == stamp:
                return counted[1]
        group = self.groups[index]
        healthy = total = 0
        for target, _ in group:
            model = target.model
            for endpoint in target.endpoints.values():
                total += 1
                healthy += endpoint.serves(model)
        panic = healthy * 100 < self.healthy_panic_threshold * total
        health = PriorityHealth(self.priorities[index], healthy, total, panic)
        self._counted[index] = (stamp, health)
        return health

    def health(self) -> list[PriorityHealth]:
        """Every priority's healthy share and panic state, for operators."""
        return [self.health_of(index) for index in range(len(self.groups))]


_HEALTHY, _CONNECTED, _UNKNOWN = range(3)
"""Which endpoints a pass of the picker considers: healthy ones; connected ones, ejected
included (panic); or those whose health is not known yet."""


_Option = tuple[Target[E], Policy, list[E], Callable[[E], bool]]
"""A target with an eligible endpoint: its policy, its endpoints, who is eligible."""


def _pick_in(
    group: tuple[tuple[Target[E], Policy], ...],
    request: RequestView,
    exclude: Collection[E],
    mode: int,
) -> Pick[E] | None:
    options: list[_Option[E]] = []
    for target, policy in group:
        endpoints = list(target.endpoints.values())
        eligible = _eligibility(target.model, exclude, mode)
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


def _by_weight(options: list[_Option[E]]) -> _Option[E]:
    """One option at random, in proportion to its target's weight."""
    point = random.random() * sum(option[0].weight for option in options)
    for option in options:
        point -= option[0].weight
        if point < 0:
            return option
    return options[-1]  # rounding at the very top
