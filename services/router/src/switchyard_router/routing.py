"""Routes: a public model name maps onto targets (cluster + model name there).

Targets of the lowest priority number are used while any of them has a
healthy endpoint; higher numbers are fallbacks. Within one priority, weights
split traffic between targets (canaries, A/B). Within a target's cluster, the
endpoint is the less loaded of two picked at random (power of two choices on
outstanding requests), so a slow replica gets less.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from itertools import groupby

from switchyard_common.status import FieldViolation, invalid_argument, model_not_found
from switchyard_router.config import RouteConfig, RouterConfig
from switchyard_router.endpoints import Cluster, Endpoint


@dataclass(frozen=True)
class Target:
    """A route's resolved target."""

    cluster: Cluster
    model: str
    priority: int
    weight: int


@dataclass(frozen=True)
class Route:
    """A public model name, its targets grouped by priority, and its policy."""

    model: str
    priorities: tuple[tuple[Target, ...], ...]
    resume: bool

    def targets(self) -> list[Target]:
        return [t for group in self.priorities for t in group]


@dataclass(frozen=True)
class Pick:
    """Where one attempt goes."""

    endpoint: Endpoint
    model: str
    cluster: str


def least_loaded_of_two(endpoints: list[Endpoint]) -> Endpoint:
    """Power of two choices on outstanding requests."""
    if len(endpoints) == 1:
        return endpoints[0]
    first, second = random.sample(endpoints, 2)
    if first.outstanding == second.outstanding:
        return first
    return first if first.outstanding < second.outstanding else second


class RouteTable:
    """Every route, over the router's clusters."""

    def __init__(self, config: RouterConfig | None, clusters: Mapping[str, Cluster]) -> None:
        routes = config.routes if config is not None else []
        self.routes = {route.model: self._route(route, clusters) for route in routes}

    @staticmethod
    def _route(config: RouteConfig, clusters: Mapping[str, Cluster]) -> Route:
        targets = sorted(
            (
                Target(clusters[t.cluster], t.model or config.model, t.priority, t.weight)
                for t in config.targets
            ),
            key=lambda t: t.priority,
        )
        priorities = tuple(tuple(group) for _, group in groupby(targets, key=lambda t: t.priority))
        return Route(config.model, priorities, config.resume)

    def watched_models(self) -> dict[str, set[str]]:
        """Per cluster name, the model names whose health its endpoints must report."""
        watched: dict[str, set[str]] = {}
        for route in self.routes.values():
            for target in route.targets():
                watched.setdefault(target.cluster.name, set()).add(target.model)
        return watched

    def route(self, model: str) -> Route:
        """The route for a model name; INVALID_ARGUMENT or NOT_FOUND for a bad one."""
        if not model:
            raise invalid_argument(
                FieldViolation("model", "is required (see ListModels for the ids)")
            )
        route = self.routes.get(model)
        if route is None:
            raise model_not_found(model, sorted(self.routes))
        return route

    def pick(self, route: Route, exclude: Collection[Endpoint] = ()) -> Pick | None:
        """The endpoint for the next attempt, or None if no endpoint can take it."""
        for group in route.priorities:
            chosen = _pick_in(group, exclude, lambda e, m: e.serves(m))
            if chosen is not None:
                return chosen
        # Nothing known healthy: try endpoints whose health is not known yet
        # (just added, or serving no health service) rather than fail.
        for group in route.priorities:
            chosen = _pick_in(group, exclude, lambda e, m: e.may_serve(m))
            if chosen is not None:
                return chosen
        return None


def _pick_in(
    group: tuple[Target, ...],
    exclude: Collection[Endpoint],
    eligible: Callable[[Endpoint, str], bool],
) -> Pick | None:
    options = []
    for target in group:
        endpoints = [
            e
            for e in target.cluster.endpoints.values()
            if e not in exclude and eligible(e, target.model)
        ]
        if endpoints:
            options.append((target, endpoints))
    if not options:
        return None
    target, endpoints = random.choices(options, weights=[t.weight for t, _ in options])[0]
    return Pick(least_loaded_of_two(endpoints), target.model, target.cluster.name)


def describe_unavailable(route: Route) -> str:
    """Why a route has no endpoint, for the UNAVAILABLE message."""
    parts = []
    for target in route.targets():
        states = ", ".join(
            f"{e.address} {e.state().value}" for e in target.cluster.endpoints.values()
        )
        parts.append(f"cluster {target.cluster.name} ({target.model}): {states or 'no endpoints'}")
    return f"no healthy model server for model {route.model!r}; " + "; ".join(parts)
