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
draining, and not already tried by this request. Only when no endpoint of any
priority is known healthy are endpoints whose health is not known yet (just
added, or serving no health service) tried, rather than fail.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

PolicyName = Literal["least_outstanding", "round_robin"]
DEFAULT_POLICY: PolicyName = "least_outstanding"


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


@dataclass(frozen=True, slots=True)
class Target(Generic[E]):
    """A route's target: a cluster's endpoints, and the model's name there."""

    cluster: str
    model: str
    priority: int
    weight: int
    endpoints: Mapping[str, E]
    """The cluster's endpoints by address, kept current as they join and leave."""


@dataclass(frozen=True, slots=True)
class Pick(Generic[E_co]):
    """Where one attempt goes."""

    endpoint: E_co
    model: str
    cluster: str


class Policy(Protocol):
    """Chooses among a target's eligible endpoints. A policy object serves one target
    of one route and may keep state between picks (a round-robin position)."""

    def choose(self, endpoints: Sequence[E], request: RequestView) -> E:
        """One of ``endpoints`` (never empty) for ``request``."""
        ...


class LeastOutstanding:
    """The less loaded of two endpoints drawn at random (power of two choices on
    requests in flight): a slow replica gets less, and no herd follows one number."""

    def choose(self, endpoints: Sequence[E], request: RequestView) -> E:
        count = len(endpoints)
        if count == 1:
            return endpoints[0]
        first = int(random.random() * count)
        second = int(random.random() * (count - 1))
        if second >= first:
            second += 1  # two different endpoints
        a, b = endpoints[first], endpoints[second]
        return b if b.outstanding < a.outstanding else a


class RoundRobin:
    """Each endpoint in turn, whatever its load."""

    def __init__(self) -> None:
        # Router replicas start at different places, so they do not all send
        # their first requests to the same endpoint.
        self._next = random.randrange(1 << 16)

    def choose(self, endpoints: Sequence[E], request: RequestView) -> E:
        index = self._next % len(endpoints)
        self._next = index + 1
        return endpoints[index]


POLICIES: Mapping[PolicyName, Callable[[], Policy]] = {
    "least_outstanding": LeastOutstanding,
    "round_robin": RoundRobin,
}
"""Every policy a route may name, by its ``policy:`` name."""


class Picker(Generic[E]):
    """One route's picker: priorities, weights, health, then the route's policy."""

    def __init__(self, targets: Sequence[Target[E]], policy: PolicyName = DEFAULT_POLICY) -> None:
        make = POLICIES[policy]
        priorities = sorted({t.priority for t in targets})
        self.groups: tuple[tuple[tuple[Target[E], Policy], ...], ...] = tuple(
            tuple((t, make()) for t in targets if t.priority == priority) for priority in priorities
        )

    def pick(self, request: RequestView, exclude: Collection[E] = ()) -> Pick[E] | None:
        """The endpoint for the next attempt of ``request`` (not one in ``exclude``),
        or None when no endpoint can take it."""
        for group in self.groups:
            chosen = _pick_in(group, request, exclude, known_healthy=True)
            if chosen is not None:
                return chosen
        # Nothing known healthy: try endpoints whose health is not known yet
        # (just added, or serving no health service) rather than fail.
        for group in self.groups:
            chosen = _pick_in(group, request, exclude, known_healthy=False)
            if chosen is not None:
                return chosen
        return None


def _pick_in(
    group: tuple[tuple[Target[E], Policy], ...],
    request: RequestView,
    exclude: Collection[E],
    known_healthy: bool,
) -> Pick[E] | None:
    options: list[tuple[Target[E], Policy, list[E]]] = []
    for target, policy in group:
        model = target.model
        eligible = [
            e
            for e in target.endpoints.values()
            if (e.serves(model) if known_healthy else e.may_serve(model)) and e not in exclude
        ]
        if eligible:
            options.append((target, policy, eligible))
    if not options:
        return None
    target, policy, eligible = options[0] if len(options) == 1 else _by_weight(options)
    return Pick(policy.choose(eligible, request), target.model, target.cluster)


def _by_weight(
    options: list[tuple[Target[E], Policy, list[E]]],
) -> tuple[Target[E], Policy, list[E]]:
    """One option at random, in proportion to its target's weight."""
    point = random.random() * sum(target.weight for target, _, _ in options)
    for option in options:
        point -= option[0].weight
        if point < 0:
            return option
    return options[-1]  # rounding at the very top
