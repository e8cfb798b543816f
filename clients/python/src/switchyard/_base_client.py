"""What :class:`~switchyard.Client` and :class:`~switchyard.AsyncClient` share: all but the I/O.

Request building, options, deadlines, the retry decision and its back-off, sending a
refused call again, result conversion, usage events and error mapping are written once
here (as the OpenAI SDK's ``_base_client`` does for its sync and async clients).
``client.py`` keeps one blocking and one asyncio body per method, and only where the
I/O differs: calling the stub (or awaiting it), sleeping between tries, closing the
channel, running a batch on threads or on tasks.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from switchyard import _convert
from switchyard._convert import GenerationOptions, MessageLike
from switchyard.errors import APIError, from_rpc_error
from switchyard.status import refused_stream
from switchyard.tools import Tool, ToolLike, tool_choice_message, tool_messages
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
# A call the server's HTTP/2 layer refused (REFUSED_STREAM: more calls on the channel
# than it takes at once) was never processed: it is sent again, whatever max_retries,
# after a pause that starts at a few milliseconds and doubles up to this (a slot frees
# when one of the channel's calls ends), until its deadline.
MAX_REFUSED_PAUSE = 0.25
# Without a deadline, this many times at most.
MAX_REFUSED_RESENDS_WITHOUT_DEADLINE = 100

API_KEY_ENV = "SWITCHYARD_API_KEY"

BatchInput = str | Sequence[MessageLike]
"""One item of ``generate_batch``: a prompt, or a conversation (a list of messages)."""


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """``authorization: Bearer <key>`` for every call (``$SWITCHYARD_API_KEY`` by default)."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return (("authorization", f"Bearer {key}"),) if key else None


def generate_request(
    model: str,
    prompt: str | None,
    messages: Sequence[MessageLike] | None,
    options: GenerationOptions,
) -> pb.GenerateRequest:
    """The request of a generate (``prompt``) or chat (``messages``) call."""
    request = pb.GenerateRequest(
        model=model, prompt=prompt or "", messages=_convert.chat_messages(messages or ())
    )
    _convert.apply_options(request, options)
    return request


def count_request(
    model: str,
    prompt: str | None,
    messages: Sequence[MessageLike] | None,
    tools: Sequence[ToolLike] | None,
    tool_choice: str | Tool | None,
) -> pb.CountTokensRequest:
    """The request of a ``count_tokens`` call."""
    request = pb.CountTokensRequest(
        model=model,
        prompt=prompt or "",
        messages=_convert.chat_messages(messages or ()),
        tools=tool_messages(tools or ()),
    )
    if tool_choice is not None:
        request.tool_choice.CopyFrom(tool_choice_message(tool_choice))
    return request


def batch_requests(
    model: str, inputs: Sequence[BatchInput], options: GenerationOptions
) -> list[pb.GenerateRequest]:
    """One request per ``generate_batch`` item: a prompt, or a conversation."""
    return [
        generate_request(model, item, None, options)
        if isinstance(item, str)
        else generate_request(model, None, item, options)
        for item in inputs
    ]


def model_list(response: pb.ListModelsResponse) -> list[ModelInfo]:
    """The result of ``list_models``."""
    return [_convert.model_info(model) for model in response.models]


@contextmanager
def raising_api_errors() -> Iterator[None]:
    """Turns a failed RPC into the SDK's :class:`~switchyard.APIError` for its status code
    (blocking and asyncio calls alike), without the gRPC exception chained to it."""
    try:
        yield
    except grpc.RpcError as rpc_error:
        raise from_rpc_error(rpc_error) from None


class Options:
    """A client's defaults for every call."""

    def __init__(
        self, timeout: float | None, max_retries: int, on_usage: UsageCallback | None
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.timeout = timeout
        self.max_retries = max_retries
        self.on_usage = on_usage


class UnaryCall:
    """One generate or chat call across its tries: deadline, retries, result, usage event.

    A client drives it: :meth:`next_timeout` before each try, :meth:`completed` with the
    response, :meth:`pause_before_retry` with a failure (how long to wait before the next
    try; it raises the error, once reported, when there is no next try).
    """

    def __init__(self, request: pb.GenerateRequest, budget: float | None, options: Options) -> None:
        self.request = request
        self._options = options
        self._started = time.monotonic()
        self._deadline = None if budget is None else self._started + budget
        self._tries = 0
        self._refusals = 0

    def next_timeout(self) -> float | None:
        """Counts a try and gives it what is left of the call's deadline."""
        self._tries += 1
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def completed(self, response: pb.GenerateResponse) -> Completion:
        """The call's result (its usage event reported)."""
        result = _convert.completion(response)
        self._report(result)
        return result

    def pause_before_retry(self, failure: grpc.RpcError) -> float:
        """Seconds to wait before the next try: what the server asked for (never less), or
        exponential back-off when it did not say. Raises the failure as an
        :class:`~switchyard.APIError` when it is not retried: not UNAVAILABLE or
        RESOURCE_EXHAUSTED, retries used up, a wait over ``MAX_RETRY_WAIT``, or past the deadline.
        A refused call (never processed) goes again soon, and is not a retry.
        """
        error = from_rpc_error(failure)
        resend = _refused_pause(error, self._refusals, self._deadline)
        if resend is not None:
            self._refusals += 1
            return resend
        retries_done = self._tries - 1 - self._refusals
        pause = error.retry_after
        if pause is None:
            pause = min(0.1 * 2.0**retries_done, 2.0)
        if not self._may_retry(error, retries_done, pause):
            self._report(error)
            raise error
        return pause

    def _may_retry(self, error: APIError, retries_done: int, pause: float) -> bool:
        if error.code not in _RETRYABLE or retries_done >= self._options.max_retries:
            return False
        if pause > MAX_RETRY_WAIT:
            return False
        return self._deadline is None or time.monotonic() + pause < self._deadline

    def _report(self, result: Completion | APIError) -> None:
        if self._options.on_usage:
            method = "chat" if self.request.messages else "generate"
            event = completion_event(method, self.request.model, self._started, self._tries, result)
            self._options.on_usage(event)


def _refused_pause(error: APIError, refusals: int, deadline: float | None) -> float | None:
    """Seconds to wait before sending a failed call again when HTTP/2 refused it (never
    processed), or None: not refused, or no time left before the deadline."""
    if not refused_stream(error.code.name, error.message):
        return None
    pause = min(MAX_REFUSED_PAUSE, 0.002 * 2.0**refusals) * random.uniform(0.5, 1.0)
    if deadline is None:
        return pause if refusals < MAX_REFUSED_RESENDS_WITHOUT_DEADLINE else None
    return pause if time.monotonic() + pause < deadline else None


class StreamStarter:
    """Starts a StreamGenerate call, and starts it again when HTTP/2 refused it before
    its first message (never processed), within the stream's deadline."""

    def __init__(
        self,
        stub: Any,
        request: pb.StreamGenerateRequest,
        budget: float | None,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> None:
        self._stub = stub
        self._request = request
        self._deadline = None if budget is None else time.monotonic() + budget
        self._metadata = metadata
        self._refusals = 0

    def start(self) -> Any:
        """A new call (neither stub blocks here) with what is left of the deadline."""
        timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        return self._stub.StreamGenerate(self._request, timeout=timeout, metadata=self._metadata)

    def resend_pause(self, rpc_error: grpc.RpcError) -> float | None:
        """Seconds to wait before starting the call again after ``rpc_error`` (which came
        before any message), or None: it is not started again."""
        pause = _refused_pause(from_rpc_error(rpc_error), self._refusals, self._deadline)
        if pause is not None:
            self._refusals += 1
        return pause


class StreamCall:
    """What :class:`~switchyard.Stream` and :class:`~switchyard.AsyncStream` share: the
    call, chunk conversion, error mapping, the usage event, and a call refused before
    its first message started again (``starter``)."""

    def __init__(
        self,
        call: Any,
        usage: StreamUsageRecorder | None = None,
        starter: StreamStarter | None = None,
    ) -> None:
        self._call = call
        self._usage = usage
        self._starter = starter
        self._chunks = 0

    def _refused_pause(self, rpc_error: grpc.RpcError) -> float | None:
        """When the call was refused before any chunk: seconds to wait before
        :meth:`_restart`; else None."""
        if self._starter is None or self._chunks:
            return None
        return self._starter.resend_pause(rpc_error)

    def _restart(self) -> None:
        assert self._starter is not None
        self._call = self._starter.start()

    def _received(self, response: pb.StreamGenerateResponse) -> StreamChunk:
        self._chunks += 1
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


ChannelT = TypeVar("ChannelT", grpc.Channel, grpc.aio.Channel)


class BaseClient(Generic[ChannelT]):
    """The state and I/O-free steps of a client over a channel of type ``ChannelT``.

    A subclass says how to open its channel (:meth:`_open_channel`), declares its stub's
    type and does the I/O.
    """

    _stub: Any  # LLMServiceStub or LLMServiceAsyncStub, as the channel makes it

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        channel: ChannelT | None = None,
        on_usage: UsageCallback | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = Options(timeout, max_retries, on_usage)  # checked before a channel opens
        self._metadata = auth_metadata(api_key)
        self._owns_channel = channel is None
        self._channel: ChannelT = (
            self._open_channel(target, credentials) if channel is None else channel
        )
        self._stub = pb_grpc.LLMServiceStub(self._channel)

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> ChannelT:
        raise NotImplementedError

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._options.timeout

    def _unary_call(self, request: pb.GenerateRequest, timeout: float | None) -> UnaryCall:
        return UnaryCall(request, self._timeout(timeout), self._options)

    def _start_stream(
        self,
        model: str,
        prompt: str | None,
        messages: Sequence[MessageLike] | None,
        timeout: float | None,
        sampling: GenerationOptions,
    ) -> tuple[Any, StreamUsageRecorder | None, StreamStarter]:
        """Starts a StreamGenerate call (neither stub blocks here): the call, its usage
        recorder and its starter, for :class:`~switchyard.Stream` or
        :class:`~switchyard.AsyncStream`."""
        # Same field numbers by contract, so the bytes are interchangeable.
        request = pb.StreamGenerateRequest.FromString(
            generate_request(model, prompt, messages, sampling).SerializeToString()
        )
        on_usage = self._options.on_usage
        usage = StreamUsageRecorder(on_usage, request.model) if on_usage else None
        starter = StreamStarter(self._stub, request, self._timeout(timeout), self._metadata)
        return starter.start(), usage, starter
