"""Routes: a public model name maps onto a cluster and the model's name there."""

from __future__ import annotations

from dataclasses import dataclass

from switchyard.status import FieldViolation, invalid_argument, model_not_found
from switchyard_router.config import RouterConfig, TargetConfig
from switchyard_router.endpoints import Cluster, Endpoint


@dataclass(frozen=True)
class Target:
    """A route's resolved target."""

    cluster: Cluster
    model: str
    priority: int
    weight: int


@dataclass(frozen=True)
class Pick:
    """Where one request goes."""

    endpoint: Endpoint
    model: str
    cluster: str


class RouteTable:
    """Every route, with the clusters they use."""

    def __init__(self, config: RouterConfig) -> None:
        self.clusters = {
            name: Cluster(name, cluster, config.max_message_bytes)
            for name, cluster in config.clusters.items()
        }
        self.routes: dict[str, list[Target]] = {
            route.model: sorted(
                (self._target(route.model, t) for t in route.targets), key=lambda t: t.priority
            )
            for route in config.routes
        }

    def _target(self, public_model: str, target: TargetConfig) -> Target:
        return Target(
            cluster=self.clusters[target.cluster],
            model=target.model or public_model,
            priority=target.priority,
            weight=target.weight,
        )

    def targets(self, model: str) -> list[Target]:
        """A route's targets by priority; INVALID_ARGUMENT or NOT_FOUND for a bad name."""
        if not model:
            raise invalid_argument(
                FieldViolation("model", "is required (see ListModels for the ids)")
            )
        targets = self.routes.get(model)
        if targets is None:
            raise model_not_found(model, sorted(self.routes))
        return targets

    def pick(self, model: str) -> Pick:
        """The endpoint for one request (first-priority target for now)."""
        target = self.targets(model)[0]
        return Pick(target.cluster.pick(), target.model, target.cluster.name)

    async def close(self) -> None:
        for cluster in self.clusters.values():
            await cluster.close()
