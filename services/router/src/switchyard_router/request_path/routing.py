"""Routes: a public model name maps onto targets (cluster + model name there).

Each route has its own picker (``picker``): its priorities share its requests by
health as Envoy's do (a priority at least ~72% healthy takes everything; as it
loses endpoints, its requests spill to the next in proportion: the route's
``overprovisioning_factor``). Within one priority, weights split traffic between
targets (canaries, A/B). Within a target's cluster, the route's ``policy`` chooses
the endpoint (``least_outstanding`` by default); a ``prefix_affinity`` route also
reads each request's affinity key (``affinity``). Only while the route as a whole
lacks healthy endpoints (normalized total health below 100) does a priority whose
healthy share is below the route's ``healthy_panic_threshold`` spread its requests
over its connected endpoints, ejected ones included (panic).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from switchyard_common.status import FieldViolation, invalid_argument, model_not_found
from switchyard_router.config import AffinityConfig, RouteConfig, RouterConfig
from switchyard_router.fleet.config import RouteCacheConfig
from switchyard_router.load_balancing.affinity import AffinityKeys
from switchyard_router.load_balancing.picker import (
    DEFAULT_LOAD_FACTOR,
    Pick,
    Picker,
    PolicyName,
    Target,
)
from switchyard_router.upstream.endpoints import Cluster, Endpoint

EndpointPick = Pick[Endpoint]
"""Where one attempt goes: an endpoint of the router's clusters and the model there."""


@dataclass(frozen=True)
class Route:
    """A public model name, its targets, and how an endpoint is picked for it."""

    model: str
    targets: tuple[Target[Endpoint], ...]
    """In priority order."""
    resume: bool
    policy: PolicyName
    picker: Picker[Endpoint]
    max_in_flight: int | None = None
    """Calls of this route in progress at once (None: only the router's limit)."""
    cache: RouteCacheConfig | None = None
    """Replay answers to identical requests (None: never)."""
    identity: str = ""
    """The route and the models its targets call, for cache keys: an answer cached
    before a reload that changed them is not replayed after it."""
    affinity: AffinityKeys | None = None
    """How a prefix_affinity route reads each request's affinity key."""


class RouteTable:
    """Every route, over the router's clusters."""

    def __init__(self, config: RouterConfig | None, clusters: Mapping[str, Cluster]) -> None:
        routes = config.routes if config is not None else []
        self.routes = {route.model: self._route(route, clusters) for route in routes}
        self.session_keys = frozenset(
            route.affinity.session_metadata_key
            for route in self.routes.values()
            if route.affinity is not None and route.affinity.session_metadata_key is not None
        )
        """Every route's session metadata key: what a front must pass on (an HTTP
        header by that name, say) for session affinity."""

    @staticmethod
    def _route(config: RouteConfig, clusters: Mapping[str, Cluster]) -> Route:
        targets = tuple(
            sorted(
                (
                    Target(
                        t.cluster,
                        t.model or config.model,
                        t.priority,
                        t.weight,
                        clusters[t.cluster].endpoints,
                        clusters[t.cluster].epoch,
                    )
                    for t in config.targets
                ),
                key=lambda t: t.priority,
            )
        )
        affinity = None
        load_factor = DEFAULT_LOAD_FACTOR
        if config.policy == "prefix_affinity":
            settings = config.affinity or AffinityConfig()
            load_factor = settings.load_factor
            affinity = AffinityKeys(
                settings.session_metadata_key, settings.prefix_bytes, settings.block_bytes
            )
        picker = Picker(
            targets,
            config.policy,
            config.healthy_panic_threshold,
            load_factor=load_factor,
            overprovisioning_factor=config.overprovisioning_factor,
        )
        identity = "\n".join(
            [config.model, *(f"{t.cluster}/{t.model}/{t.priority}/{t.weight}" for t in targets)]
        )
        return Route(
            config.model,
            targets,
            config.resume,
            config.policy,
            picker,
            config.max_in_flight,
            config.cache,
            identity,
            affinity,
        )

    def watched_models(self) -> dict[str, set[str]]:
        """Per cluster name, the model names whose health its endpoints must report."""
        watched: dict[str, set[str]] = {}
        for route in self.routes.values():
            for target in route.targets:
                watched.setdefault(target.cluster, set()).add(target.model)
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


def describe_unavailable(route: Route) -> str:
    """Why a route has no endpoint, for the UNAVAILABLE message."""
    parts = []
    for target in route.targets:
        states = ", ".join(
            f"{e.address} {e.state_for(target.model).value}" for e in target.endpoints.values()
        )
        parts.append(f"cluster {target.cluster} ({target.model}): {states or 'no endpoints'}")
    return f"no healthy model server for model {route.model!r}; " + "; ".join(parts)
