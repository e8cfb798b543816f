"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods, the same results.

from switchyard import Client

with Client("localhost:50051") as client:
    print(client.generate("smollm2-135m-instruct", "The capital of France is",
                          max_tokens=16, temperature=0).text)

Everything the two share (request building, retries, result conversion, usage
events, error mapping) is in ``_base_client``; each method here is the I/O only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self, Unpack, overload

import grpc
import grpc.aio

from switchyard import _convert
from switchyard._base_client import (
    API_KEY_ENV,
    DEFAULT_BATCH_CONCURRENCY,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_RETRY_WAIT,
    BaseClient,
    BatchInput,
    StreamCall,
    StreamStarter,
    auth_metadata,
    batch_requests,
    count_request,
    generate_request,
    model_list,
    raising_api_errors,
)
from switchyard._convert import GenerationOptions, MessageLike
from switchyard.batch import run_concurrently, run_threaded
from switchyard.errors import APIError
from switchyard.tools import Tool, ToolLike
from switchyard.types import Completion, ModelInfo, StreamChunk, TokenCount
from switchyard.usage import StreamUsageRecorder
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_BATCH_CONCURRENCY",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_WAIT",
    "AsyncClient",
    "AsyncStream",
    "BatchInput",
    "Client",
    "Stream",
    "auth_metadata",
]


class Stream(StreamCall, Iterator[StreamChunk]):
    """A streamed generation: iterate it for chunks; ``close()`` cancels it.

    Use it as a context manager (``with client.stream(...) as stream:``) or
    call ``close()`` when you stop reading early, so the server stops
    generating at once rather than when the stream is garbage-collected.
    """

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamChunk:
        while True:
            try:
                response = next(self._call)
            except StopIteration:
                self._ended()
                raise
            except grpc.RpcError as rpc_error:
                pause = self._refused_pause(rpc_error)
                if pause is None:
                    raise self._failed(rpc_error) from None
                time.sleep(pause)  # refused before its first chunk: sent again
                self._restart()
                continue
            return self._received(response)

    def close(self) -> None:
        """Cancels the request if it is still running (a no-op once finished)."""
        self._cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStream(StreamCall, AsyncIterator[StreamChunk]):
    """The asyncio twin of :class:`Stream` (``async with`` / ``await aclose()``)."""

    def __init__(
        self,
        call: Any,
        usage: StreamUsageRecorder | None = None,
        starter: StreamStarter | None = None,
    ) -> None:
        super().__init__(call, usage, starter)
        self._responses = call.__aiter__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        while True:
            try:
                response = await self._responses.__anext__()
            except StopAsyncIteration:
                self._ended()
                raise
            except grpc.RpcError as rpc_error:
                pause = self._refused_pause(rpc_error)
                if pause is None:
                    raise self._failed(rpc_error) from None
                await asyncio.sleep(pause)  # refused before its first chunk: sent again
                self._restart()
                self._responses = self._call.__aiter__()
                continue
            return self._received(response)

    async def aclose(self) -> None:
        """Cancels the request if it is still running (a no-op once finished)."""
        self._cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Client(BaseClient[grpc.Channel]):
    """A blocking client for a Switchyard router or model server.

    Args:
        target: ``host:port`` of the router (or of a model server).
        timeout: default per-call deadline in seconds (None: no deadline).
        max_retries: retries of unary calls on UNAVAILABLE / RESOURCE_EXHAUSTED,
            with exponential back-off or after the server's RetryInfo (never sooner;
            a wait longer than the timeout or MAX_RETRY_WAIT raises the error at
            once, its ``retry_after`` set). Streams are not retried by the client
            (the router retries them before the first token).
        channel: an existing channel to use instead of creating one.
        on_usage: called with a :class:`~switchyard.usage.UsageEvent` (tokens,
            latency, errors) after every generate, chat and stream call.
        api_key: sent as ``authorization: Bearer <key>`` (default: ``$SWITCHYARD_API_KEY``).
        credentials: TLS credentials (``grpc.ssl_channel_credentials(...)``) for a
            router that serves TLS; unset: plaintext.
    """

    _stub: pb_grpc.LLMServiceStub

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None
    ) -> grpc.Channel:
        if credentials is not None:
            return grpc.secure_channel(target, credentials)
        return grpc.insecure_channel(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (if the client created it)."""
        if self._owns_channel:
            self._channel.close()

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> Completion:
        """Completes ``prompt`` and returns the whole result."""
        return self._complete(generate_request(model, prompt, None, sampling), timeout)

    def chat(
        self,
        model: str,
        messages: Sequence[MessageLike],
        *,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> Completion:
        """Answers a conversation (``[{"role": "user", "content": "..."}]``)."""
        return self._complete(generate_request(model, None, messages, sampling), timeout)

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> Stream:
        """Streams a completion of ``prompt`` (or a chat answer to ``messages``).

        Errors are raised while iterating. ``close()`` the stream (or use it as
        a context manager) to cancel the request when you stop reading early.
        """
        return Stream(*self._start_stream(model, prompt, messages, timeout, sampling))

    @overload
    def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion]: ...

    @overload
    def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[True],
        timeout: float | None = ...,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion | APIError]: ...

    def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        return_exceptions: bool = False,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion] | list[Completion | APIError]:
        """Answers every prompt (or conversation) with at most ``max_concurrency`` in flight.

        Results come in input order. The first error is raised (calls not yet
        started are dropped) unless ``return_exceptions``, which puts each
        failed item's :class:`~switchyard.APIError` in its place instead.
        Each call has its own ``timeout`` and retries, and its own usage event.
        """
        return run_threaded(
            lambda request: self._complete(request, timeout),
            batch_requests(model, inputs, sampling),
            max_concurrency,
            return_exceptions,
        )

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models served, with their live status."""
        with raising_api_errors():
            response = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        return model_list(response)

    def count_tokens(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        tools: Sequence[ToolLike] | None = None,
        tool_choice: str | Tool | None = None,
        timeout: float | None = None,
    ) -> TokenCount:
        """Counts the tokens ``prompt`` (or ``messages``, with ``tools``) takes with the
        model's own tokenizer and chat template: what ``usage.prompt_tokens`` of the same
        call would be. Backends that cannot count exactly raise ``UnimplementedError``."""
        request = count_request(model, prompt, messages, tools, tool_choice)
        with raising_api_errors():
            response = self._stub.CountTokens(
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        return _convert.token_count(response)

    def _complete(self, request: pb.GenerateRequest, timeout: float | None) -> Completion:
        call = self._unary_call(request, timeout)
        while True:
            try:
                response = self._stub.Generate(
                    request, timeout=call.next_timeout(), metadata=self._metadata
                )
            except grpc.RpcError as rpc_error:
                failure = rpc_error
            else:
                return call.completed(response)
            time.sleep(call.pause_before_retry(failure))


class AsyncClient(BaseClient[grpc.aio.Channel]):
    """The asyncio twin of :class:`Client`, with the same methods and options."""

    _stub: pb_grpc.LLMServiceAsyncStub

    def _open_channel(
        self, target: str, credentials: grpc.ChannelCredentials | None
    ) -> grpc.aio.Channel:
        if credentials is not None:
            return grpc.aio.secure_channel(target, credentials)
        return grpc.aio.insecure_channel(target)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel (if the client created it)."""
        if self._owns_channel:
            await self._channel.close(grace=None)

    async def generate(
        self,
        model: str,
        prompt: str,
        *,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> Completion:
        """Completes ``prompt`` and returns the whole result."""
        return await self._complete(generate_request(model, prompt, None, sampling), timeout)

    async def chat(
        self,
        model: str,
        messages: Sequence[MessageLike],
        *,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> Completion:
        """Answers a conversation (``[{"role": "user", "content": "..."}]``)."""
        return await self._complete(generate_request(model, None, messages, sampling), timeout)

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> AsyncStream:
        """Streams a completion; ``aclose()`` it (or ``async with``) to cancel early."""
        return AsyncStream(*self._start_stream(model, prompt, messages, timeout, sampling))

    @overload
    async def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion]: ...

    @overload
    async def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[True],
        timeout: float | None = ...,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion | APIError]: ...

    async def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        return_exceptions: bool = False,
        timeout: float | None = None,
        **sampling: Unpack[GenerationOptions],
    ) -> list[Completion] | list[Completion | APIError]:
        """Answers every prompt (or conversation) with at most ``max_concurrency`` in flight.

        Results come in input order. The first error is raised (the calls still running are
        cancelled) unless ``return_exceptions``, which puts each
        failed item's :class:`~switchyard.APIError` in its place instead.
        Each call has its own ``timeout`` and retries, and its own usage event.
        """
        return await run_concurrently(
            lambda request: self._complete(request, timeout),
            batch_requests(model, inputs, sampling),
            max_concurrency,
            return_exceptions,
        )

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models served, with their live status."""
        with raising_api_errors():
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        return model_list(response)

    async def count_tokens(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        tools: Sequence[ToolLike] | None = None,
        tool_choice: str | Tool | None = None,
        timeout: float | None = None,
    ) -> TokenCount:
        """Counts tokens as :meth:`Client.count_tokens` does."""
        request = count_request(model, prompt, messages, tools, tool_choice)
        with raising_api_errors():
            response = await self._stub.CountTokens(
                request, timeout=self._timeout(timeout), metadata=self._metadata
            )
        return _convert.token_count(response)

    async def _complete(self, request: pb.GenerateRequest, timeout: float | None) -> Completion:
        call = self._unary_call(request, timeout)
        while True:
            try:
                response = await self._stub.Generate(
                    request, timeout=call.next_timeout(), metadata=self._metadata
                )
            except grpc.RpcError as rpc_error:
                failure = rpc_error
            else:
                return call.completed(response)
            await asyncio.sleep(call.pause_before_retry(failure))
