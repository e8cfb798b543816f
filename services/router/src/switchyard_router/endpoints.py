"""Endpoints (one model server each, one channel each) and the clusters that group them."""

from __future__ import annotations

import itertools

import grpc.aio

from switchyard_router.config import ClusterConfig

GENERATE = "/switchyard.v1.LLMService/Generate"
STREAM_GENERATE = "/switchyard.v1.LLMService/StreamGenerate"
LIST_MODELS = "/switchyard.v1.LLMService/ListModels"


class Endpoint:
    """One model server: its channel, raw-bytes call stubs and load."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Keep idle connections to model servers warm and detect dead peers.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
            ],
        )
        # No (de)serializers: requests and responses pass through as bytes.
        self.generate = self.channel.unary_unary(GENERATE, None, None)
        self.stream_generate = self.channel.unary_stream(STREAM_GENERATE, None, None)
        self.list_models = self.channel.unary_unary(LIST_MODELS, None, None)
        self.outstanding = 0

    async def close(self) -> None:
        await self.channel.close(grace=None)


class Cluster:
    """Model servers that serve the same models; picks one per request."""

    def __init__(self, name: str, config: ClusterConfig, max_message_bytes: int) -> None:
        self.name = name
        self.endpoints = [Endpoint(a, max_message_bytes) for a in config.endpoints]
        self._rotation = itertools.cycle(self.endpoints)

    def pick(self) -> Endpoint:
        """The endpoint for the next request (round robin for now)."""
        return next(self._rotation)

    async def close(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.close()
