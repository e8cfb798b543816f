"""RouterAdminService: the router's view of every endpoint, for operators: each
endpoint's state, each cluster's ejections against its cap, and each route
priority's healthy share and panic state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2

from switchyard.v1 import router_admin_pb2 as admin_pb
from switchyard.v1 import router_admin_pb2_grpc as admin_grpc
from switchyard_router.request_path.routing import RouteTable
from switchyard_router.upstream.endpoints import Cluster, EndpointState, ModelHealth

_STATE = {
    EndpointState.HEALTHY: admin_pb.ENDPOINT_STATE_HEALTHY,
    EndpointState.NOT_SERVING: admin_pb.ENDPOINT_STATE_NOT_SERVING,
    EndpointState.UNREACHABLE: admin_pb.ENDPOINT_STATE_UNREACHABLE,
    EndpointState.EJECTED: admin_pb.ENDPOINT_STATE_EJECTED,
    EndpointState.UNKNOWN: admin_pb.ENDPOINT_STATE_UNKNOWN,
    EndpointState.DRAINING: admin_pb.ENDPOINT_STATE_DRAINING,
}
_HEALTH = {
    ModelHealth.UNKNOWN: admin_pb.SERVING_STATE_UNSPECIFIED,
    ModelHealth.SERVING: admin_pb.SERVING_STATE_SERVING,
    ModelHealth.NOT_SERVING: admin_pb.SERVING_STATE_NOT_SERVING,
    ModelHealth.UNREACHABLE: admin_pb.SERVING_STATE_UNREACHABLE,
}


class RouterAdmin(admin_grpc.RouterAdminServiceServicer):
    """Reports the endpoints of the router's current clusters."""

    def __init__(
        self,
        clusters: Callable[[], Mapping[str, Cluster]],
        routes: Callable[[], RouteTable],
        authorize: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[object]],
    ) -> None:
        self._clusters = clusters
        self._routes = routes
        self._authorize = authorize  # aborts UNAUTHENTICATED or PERMISSION_DENIED (auth on)

    async def ListEndpoints(  # noqa: N802 - gRPC method name
        self,
        request: admin_pb.ListEndpointsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb.ListEndpointsResponse:
        await self._authorize(context)
        response = admin_pb.ListEndpointsResponse()
        now = time.monotonic()
        for name, cluster in sorted(self._clusters().items()):
            for address, endpoint in sorted(cluster.endpoints.items()):
                ejected_for = duration_pb2.Duration()
                left = max(0.0, endpoint.ejection.ejected_until - now)
                ejected_for.FromNanoseconds(int(left * 1e9))
                response.endpoints.append(
                    admin_pb.EndpointStatus(
                        cluster=name,
                        address=address,
                        state=_STATE[endpoint.state()],
                        models=[
                            admin_pb.ModelHealth(model=model, state=_HEALTH[health])
                            for model, health in sorted(endpoint.health.items())
                        ],
                        outstanding_requests=endpoint.outstanding,
                        consecutive_failures=endpoint.ejection.consecutive_failures,
                        ejection_reason=endpoint.ejection.reason,
                        ejected_for=ejected_for,
                        ejections=endpoint.ejection.ejections,
                        connections=len(endpoint.pool.connections),
                    )
                )
            outlier = cluster.outlier
            response.clusters.append(
                admin_pb.ClusterStatus(
                    cluster=name,
                    endpoints=len(cluster.endpoints),
                    ejected_endpoints=outlier.ejected_count(),
                    max_ejected_endpoints=outlier.max_ejected(),
                    max_ejection_percent=outlier.config.max_ejection_percent,
                    ejections_overflow=outlier.overflows,
                )
            )
        for model, route in sorted(self._routes().routes.items()):
            for health in route.picker.health():
                response.priorities.append(
                    admin_pb.PriorityStatus(
                        route=model,
                        priority=health.priority,
                        endpoints=health.endpoints,
                        healthy_endpoints=health.healthy,
                        healthy_panic_threshold=route.picker.healthy_panic_threshold,
                        panic=health.panic,
                        health=health.health,
                        priority_load=health.load,
                    )
                )
        return response
