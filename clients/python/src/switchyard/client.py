"""`Client` (blocking) and `AsyncClient` (asyncio): the same methods, the same results.

from switchyard import Client

with Client("localhost:50051") as client:
    print(client.generate("smollm2-135m-instruct", "The capital of France is",
                          max_tokens=16, temperature=0).text)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self, Unpack, overload

import grpc
import grpc.aio

from switchyard import _convert
from switchyard._convert import MessageLike, SamplingOptions
from switchyard.batch import run_concurrently, run_threaded
from switchyard.errors import APIError, from_rpc_error
from switchyard.types import Completion, ModelInfo, StreamChunk
from switchyard.usage import StreamUsageRecorder, UsageCallback, completion_event
from switchyard.v1 import llm_service_pb2 as pb
from switchyard.v1 import llm_service_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 60.0
DEFAULT_BATCH_CONCURRENCY = 8
# A RetryInfo asking for a longer wait than this is not waited for: the error is raised.
MAX_RETRY_WAIT = 10.0
_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)

API_KEY_ENV = "SWITCHYARD_API_KEY"

BatchInput = str | Sequence[MessageLike]
"""One item of ``generate_batch``: a prompt, or a conversation (a list of messages)."""


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """``authorization: Bearer <key>`` for every call (``$SWITCHYARD_API_KEY`` by default)."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return (("authorization", f"Bearer {key}"),) if key else None


def _generate_request(
    model: str, prompt: str | None, messages: Sequence[MessageLike] | None, options: SamplingOptions
) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        prompt=prompt or "",
        messages=_convert.chat_messages(messages or ()),
        sampling=_convert.sampling_params(options),
    )


def _batch_request(model: str, item: BatchInput, options: SamplingOptions) -> pb.GenerateRequest:
    if isinstance(item, str):
        return _generate_request(model, item, None, options)
    return _generate_request(model, None, item, options)


def _method(request: pb.GenerateRequest) -> str:
    return "chat" if request.messages else "generate"


class _Tries:
    """Counts the attempts of one unary call (for its usage event)."""

    def __init__(self) -> None:
        self.count = 0


def _stream_request(request: pb.GenerateRequest) -> pb.StreamGenerateRequest:
    # Same field numbers by contract, so the bytes are interchangeable.
    return pb.StreamGenerateRequest.FromString(request.SerializeToString())


def _backoff(attempt: int, error: APIError) -> float:
    """The pause before the next try: what the server asked for (never less), or
    exponential back-off when it did not say."""
    retry_after: float | None = error.retry_after
    if retry_after is not None:
        return retry_after  # never earlier than the server said: it would be refused again
    return min(0.1 * 2.0**attempt, 2.0)


class _StreamCall:
    """What :class:`Stream` and :class:`AsyncStream` share: the call and its usage event."""

    def __init__(self, call: Any, usage: StreamUsageRecorder | None = None) -> None:
        self._call = call
        self._usage = usage

    def _received(self, response: pb.StreamGenerateResponse) -> StreamChunk:
        chunk = _convert.stream_chunk(response)
        if self._usage:
            self._usage.chunk(chunk)
        return chunk

    def _ended(self) -> None:
        if self._usage:
            self._usage.finish()

    def _failed(self, rpc_error: grpc.RpcError) -> APIError:
        error = from_rpc_error(rpc_error)
        if self._usage:
            self._usage.finish(error)
        return error

    def _cancel(self) -> None:
        self._call.cancel()
        if self._usage:
            self._usage.finish(closed=True)

    def __del__(self) -> None:
        # A stream dropped unread still ends its call, and still reports its usage.
        self._cancel()


class Stream(_StreamCall, Iterator[StreamChunk]):
    """A streamed generation: iterate it for chunks; ``close()`` cancels it.

    Use it as a context manager (``with client.stream(...) as stream:``) or
    call ``close()`` when you stop reading early, so the server stops
    generating at once rather than when the stream is garbage-collected.
    """

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> StreamChunk:
        try:
            response = next(self._call)
        except StopIteration:
            self._ended()
            raise
        except grpc.RpcError as rpc_error:
            raise self._failed(rpc_error) from None
        return self._received(response)

    def close(self) -> None:
        """Cancels the request if it is still running (a no-op once finished)."""
        self._cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncStream(_StreamCall, AsyncIterator[StreamChunk]):
    """The asyncio twin of :class:`Stream` (``async with`` / ``await aclose()``)."""

    def __init__(self, call: Any, usage: StreamUsageRecorder | None = None) -> None:
        super().__init__(call, usage)
        self._responses = call.__aiter__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamChunk:
        try:
            response = await self._responses.__anext__()
        except StopAsyncIteration:
            self._ended()
            raise
        except grpc.RpcError as rpc_error:
            raise self._failed(rpc_error) from None
        return self._received(response)

    async def aclose(self) -> None:
        """Cancels the request if it is still running (a no-op once finished)."""
        self._cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Options:
    def __init__(
        self, timeout: float | None, max_retries: int, on_usage: UsageCallback | None
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.timeout = timeout
        self.max_retries = max_retries
        self.on_usage = on_usage

    def stream_usage(self, request: pb.StreamGenerateRequest) -> StreamUsageRecorder | None:
        return StreamUsageRecorder(self.on_usage, request.model) if self.on_usage else None

    def report(
        self,
        request: pb.GenerateRequest,
        started: float,
        tries: _Tries,
        result: Completion | APIError,
    ) -> None:
        if self.on_usage:
            self.on_usage(
                completion_event(_method(request), request.model, started, tries.count, result)
            )


class Client:
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

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        channel: grpc.Channel | None = None,
        on_usage: UsageCallback | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = _Options(timeout, max_retries, on_usage)
        self._owns_channel = channel is None
        self._metadata = auth_metadata(api_key)
        if channel is None:
            channel = (
                grpc.secure_channel(target, credentials)
                if credentials is not None
                else grpc.insecure_channel(target)
            )
        self._channel = channel
        self._stub = pb_grpc.LLMServiceStub(self._channel)

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
        **sampling: Unpack[SamplingOptions],
    ) -> Completion:
        """Completes ``prompt`` and returns the whole result."""
        return self._complete(_generate_request(model, prompt, None, sampling), timeout)

    def chat(
        self,
        model: str,
        messages: Sequence[MessageLike],
        *,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> Completion:
        """Answers a conversation (``[{"role": "user", "content": "..."}]``)."""
        return self._complete(_generate_request(model, None, messages, sampling), timeout)

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> Stream:
        """Streams a completion of ``prompt`` (or a chat answer to ``messages``).

        Errors are raised while iterating. ``close()`` the stream (or use it as
        a context manager) to cancel the request when you stop reading early.
        """
        request = _stream_request(_generate_request(model, prompt, messages, sampling))
        usage = self._options.stream_usage(request)
        call = self._stub.StreamGenerate(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return Stream(call, usage)

    @overload
    def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
        **sampling: Unpack[SamplingOptions],
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
        **sampling: Unpack[SamplingOptions],
    ) -> list[Completion | APIError]: ...

    def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        return_exceptions: bool = False,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> list[Completion] | list[Completion | APIError]:
        """Answers every prompt (or conversation) with at most ``max_concurrency`` in flight.

        Results come in input order. The first error is raised (calls not yet
        started are dropped) unless ``return_exceptions``, which puts each
        failed item's :class:`~switchyard.APIError` in its place instead.
        Each call has its own ``timeout`` and retries, and its own usage event.
        """
        requests = [_batch_request(model, item, sampling) for item in inputs]
        results = run_threaded(
            lambda request: self._complete(request, timeout),
            requests,
            max_concurrency,
            return_exceptions,
        )
        return results

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models served, with their live status."""
        try:
            response = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [_convert.model_info(m) for m in response.models]

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._options.timeout

    def _complete(self, request: pb.GenerateRequest, timeout: float | None) -> Completion:
        started, tries = time.monotonic(), _Tries()
        try:
            result = _convert.completion(self._unary(request, timeout, tries))
        except APIError as error:
            self._options.report(request, started, tries, error)
            raise
        self._options.report(request, started, tries, result)
        return result

    def _unary(
        self, request: pb.GenerateRequest, timeout: float | None, tries: _Tries
    ) -> pb.GenerateResponse:
        budget = self._timeout(timeout)
        deadline = None if budget is None else time.monotonic() + budget
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            tries.count += 1
            try:
                response: pb.GenerateResponse = self._stub.Generate(
                    request, timeout=remaining, metadata=self._metadata
                )
                return response
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            pause = _backoff(attempt, error)
            if not _should_retry(error, attempt, self._options.max_retries, deadline, pause):
                raise error
            time.sleep(pause)
            attempt += 1


def _should_retry(
    error: APIError, attempt: int, max_retries: int, deadline: float | None, pause: float
) -> bool:
    if error.code not in _RETRYABLE or attempt >= max_retries or pause > MAX_RETRY_WAIT:
        return False
    return deadline is None or time.monotonic() + pause < deadline


class AsyncClient:
    """The asyncio twin of :class:`Client`, with the same methods and options."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        channel: grpc.aio.Channel | None = None,
        on_usage: UsageCallback | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = _Options(timeout, max_retries, on_usage)
        self._owns_channel = channel is None
        self._metadata = auth_metadata(api_key)
        if channel is None:
            channel = (
                grpc.aio.secure_channel(target, credentials)
                if credentials is not None
                else grpc.aio.insecure_channel(target)
            )
        self._channel = channel
        self._stub = pb_grpc.LLMServiceStub(self._channel)

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
        **sampling: Unpack[SamplingOptions],
    ) -> Completion:
        """Completes ``prompt`` and returns the whole result."""
        return await self._complete(_generate_request(model, prompt, None, sampling), timeout)

    async def chat(
        self,
        model: str,
        messages: Sequence[MessageLike],
        *,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> Completion:
        """Answers a conversation (``[{"role": "user", "content": "..."}]``)."""
        return await self._complete(_generate_request(model, None, messages, sampling), timeout)

    def stream(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: Sequence[MessageLike] | None = None,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> AsyncStream:
        """Streams a completion; ``aclose()`` it (or ``async with``) to cancel early."""
        request = _stream_request(_generate_request(model, prompt, messages, sampling))
        usage = self._options.stream_usage(request)
        call = self._stub.StreamGenerate(
            request, timeout=self._timeout(timeout), metadata=self._metadata
        )
        return AsyncStream(call, usage)

    @overload
    async def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
        timeout: float | None = ...,
        **sampling: Unpack[SamplingOptions],
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
        **sampling: Unpack[SamplingOptions],
    ) -> list[Completion | APIError]: ...

    async def generate_batch(
        self,
        model: str,
        inputs: Sequence[BatchInput],
        *,
        max_concurrency: int = DEFAULT_BATCH_CONCURRENCY,
        return_exceptions: bool = False,
        timeout: float | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> list[Completion] | list[Completion | APIError]:
        """Answers every prompt (or conversation) with at most ``max_concurrency`` in flight.

        Results come in input order. The first error is raised (the calls still running are
        cancelled) unless ``return_exceptions``, which puts each
        failed item's :class:`~switchyard.APIError` in its place instead.
        Each call has its own ``timeout`` and retries, and its own usage event.
        """
        requests = [_batch_request(model, item, sampling) for item in inputs]
        results = await run_concurrently(
            lambda request: self._complete(request, timeout),
            requests,
            max_concurrency,
            return_exceptions,
        )
        return results

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models served, with their live status."""
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return [_convert.model_info(m) for m in response.models]

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._options.timeout

    async def _complete(self, request: pb.GenerateRequest, timeout: float | None) -> Completion:
        started, tries = time.monotonic(), _Tries()
        try:
            result = _convert.completion(await self._unary(request, timeout, tries))
        except APIError as error:
            self._options.report(request, started, tries, error)
            raise
        self._options.report(request, started, tries, result)
        return result

    async def _unary(
        self, request: pb.GenerateRequest, timeout: float | None, tries: _Tries
    ) -> pb.GenerateResponse:
        budget = self._timeout(timeout)
        deadline = None if budget is None else time.monotonic() + budget
        attempt = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            tries.count += 1
            try:
                response: pb.GenerateResponse = await self._stub.Generate(
                    request, timeout=remaining, metadata=self._metadata
                )
                return response
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            pause = _backoff(attempt, error)
            if not _should_retry(error, attempt, self._options.max_retries, deadline, pause):
                raise error
            await asyncio.sleep(pause)
            attempt += 1
