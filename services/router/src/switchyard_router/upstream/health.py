"""Health watching: one grpc.health.v1 Watch stream per endpoint and model name.

Push, not polling: a model server that turns NOT_SERVING, or whose process
dies (the stream breaks at once), leaves rotation as soon as the router hears.

A broken stream is opened again at once and waits for the channel to reconnect
(gRPC's ``wait_for_ready``), so the first report arrives as soon as the cluster's
reconnect back-off lets the connection through; only a stream that fails on a
live connection waits a jittered pause (the same back-off) before its next try.
The first report on each new stream is *fresh*: SERVING then ends an ejection
(``outlier``). Each SERVING report also has the endpoint read its ListModels
once (what its models can do: ``capabilities``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from switchyard_router.upstream.backoff import Backoff

if TYPE_CHECKING:
    from switchyard_router.upstream.endpoints import Endpoint

log = logging.getLogger("switchyard.router.health")

SERVING = health_pb2.HealthCheckResponse.SERVING


class HealthWatcher:
    """Keeps one endpoint's per-model health current, for a set of model names."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._stub = health_pb2_grpc.HealthStub(endpoint.channel)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def watch(self, names: set[str]) -> None:
        """Watches exactly ``names`` from now on."""
        for name in set(self._tasks) - names:
            self._tasks.pop(name).cancel()
            self._endpoint.forget_model(name)
        for name in names - set(self._tasks):
            self._tasks[name] = asyncio.get_running_loop().create_task(
                self._follow(name), name=f"health {self._endpoint.address} {name}"
            )

    async def _follow(self, name: str) -> None:
        backoff = Backoff(self._endpoint.reconnect_backoff)
        reconnecting = False  # the first stream may fail at once: that says "unreachable"
        while True:
            call = self._stub.Watch(
                health_pb2.HealthCheckRequest(service=name), wait_for_ready=reconnecting
            )
            fresh = True
            try:
                with self._endpoint.pool.background_stream():
                    async for response in call:
                        serving = response.status == SERVING
                        self._endpoint.set_model_health(name, serving, fresh)
                        if serving:  # (a report is a change, or the first on a stream)
                            self._endpoint.read_models_soon()
                        fresh = False
                        backoff.reset()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # No health service there: trust it, and rely on outlier detection.
                    log.warning(
                        "%s has no health service; assuming SERVING", self._endpoint.address
                    )
                    self._endpoint.set_model_health(name, True)
                    self._endpoint.read_models_soon()
                    return
                self._endpoint.set_unreachable(name, error.details() or error.code().name)
            finally:
                call.cancel()
            reconnecting = True
            if not fresh:  # it had answered: reconnect at once (the channel paces itself)
                continue
            await backoff.wait()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
