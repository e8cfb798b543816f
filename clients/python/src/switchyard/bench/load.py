"""Load generation for `switchyard bench`: closed and open loops over grpc.aio.

Requests go through the generated method paths with pre-serialised request
bytes (no SDK conversion, no retries), so the client does as little as it can
per request and every failure is counted under its own status code.

- Closed loop: ``concurrency`` workers, each sending its next request as soon
  as the previous one finished. Latency counts from the send.
- Open loop: requests start at scheduled times (``rate`` per second, Poisson
  or uniformly spaced arrivals) whether or not earlier ones have finished, so a
  slow server cannot slow the load down. Latency and time to first token count
  from the scheduled time, so a client that falls behind (or a server that
  queues) is charged for the wait rather than hiding it (coordinated omission).

Both stop issuing when ``requests`` have been sent or ``duration`` seconds
have passed, then wait for the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

import grpc
import grpc.aio

from switchyard import _convert
from switchyard.bench.progress import LiveCounters, ProgressLine
from switchyard.bench.prompts import Prompt
from switchyard.bench.stats import OK, RequestRecord, TargetResult
from switchyard.connection import Connection
from switchyard.v1 import llm_service_pb2 as pb

Arrival = Literal["poisson", "uniform"]
_GENERATE = "/switchyard.v1.LLMService/Generate"
_STREAM_GENERATE = "/switchyard.v1.LLMService/StreamGenerate"
# Open-loop gaps longer than this wait on the stop event too (cheaper sleeps below it).
_STOP_CHECK = 0.1


class BenchError(Exception):
    """A benchmark that cannot run (unreachable target, unknown model); the message says why."""


@dataclass(frozen=True)
class LoadConfig:
    """What to send, how hard and for how long."""

    model: str
    prompts: Sequence[Prompt]
    concurrency: int | None = 1
    rate: float | None = None
    arrival: Arrival = "poisson"
    duration: float | None = None
    requests: int | None = 100
    max_tokens: int | None = None
    stream: bool = False
    timeout: float = 60.0
    seed: int = 0
    rounds: int = 1
    """Rounds per target; with several targets they alternate round by round."""

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("exactly one of --concurrency and --rate is needed")
        if self.duration is None and self.requests is None:
            raise ValueError("--duration or --requests is needed")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1 (got {self.concurrency})")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"--rate must be positive (got {self.rate:g})")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"--duration must be positive (got {self.duration:g})")
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"--requests must be at least 1 (got {self.requests})")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.timeout <= 0:
            raise ValueError(f"--timeout must be positive (got {self.timeout:g})")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be at least 1 (got {self.rounds})")

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency is not None else "open"


def request_payloads(config: LoadConfig) -> list[bytes]:
    """Each prompt's request, serialised once (Generate and StreamGenerate share field numbers)."""
    sampling = _convert.sampling_params(
        {} if config.max_tokens is None else {"max_tokens": config.max_tokens}
    )
    payloads = []
    for prompt in config.prompts:
        request = pb.GenerateRequest(
            model=config.model,
            prompt=prompt.prompt or "",
            messages=_convert.chat_messages(prompt.messages),
            sampling=sampling,
        )
        payloads.append(request.SerializeToString())
    return payloads


class RequestSender:
    """Sends request number ``index`` to one target and times what comes back."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        payloads: Sequence[bytes],
        config: LoadConfig,
        origin: float,
        counters: LiveCounters,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._payloads = payloads
        self._metadata = metadata
        self._stream = config.stream
        self._timeout = config.timeout
        self._origin = origin
        self._counters = counters
        self._generate = channel.unary_unary(
            _GENERATE, request_serializer=None, response_deserializer=pb.GenerateResponse.FromString
        )
        self._stream_generate = channel.unary_stream(
            _STREAM_GENERATE,
            request_serializer=None,
            response_deserializer=pb.StreamGenerateResponse.FromString,
        )

    async def send(self, index: int, scheduled: float) -> RequestRecord:
        """Sends one request; ``scheduled`` is seconds since the run's origin."""
        counters, origin = self._counters, self._origin
        payload = self._payloads[index % len(self._payloads)]
        counters.sent += 1
        counters.in_flight += 1
        sent = time.monotonic() - origin
        first: float | None = None
        last: float | None = None
        tokens = 0
        code = OK
        try:
            if self._stream:
                call = self._stream_generate(
                    payload, timeout=self._timeout, metadata=self._metadata
                )
                async for response in call:
                    if response.text:
                        last = time.monotonic() - origin
                        if first is None:
                            first = last
                    if response.finish_reason:
                        tokens = response.usage.completion_tokens
            else:
                reply = await self._generate(
                    payload, timeout=self._timeout, metadata=self._metadata
                )
                tokens = reply.usage.completion_tokens
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        finished = time.monotonic() - origin
        counters.in_flight -= 1
        counters.done += 1
        if code != OK:
            counters.errors += 1
        else:
            counters.latencies.append(finished - scheduled)
        return RequestRecord(index, scheduled, sent, finished, code, first, last, tokens)


async def closed_loop(
    sender: RequestSender,
    config: LoadConfig,
    first_index: int,
    requests: int | None,
    duration: float | None,
    origin: float,
    stop: asyncio.Event,
) -> list[RequestRecord]:
    """``concurrency`` workers back to back until the count or the time is reached."""
    assert config.concurrency is not None
    indexes = itertools.count(first_index)
    deadline = None if duration is None else time.monotonic() + duration
    last_index = None if requests is None else first_index + requests
    records: list[RequestRecord] = []

    async def worker() -> None:
        while True:
            index = next(indexes)
            if (last_index is not None and index >= last_index) or stop.is_set():
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            records.append(await sender.send(index, now - origin))

    await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    return records


def arrival_offsets(rate: float, arrival: Arrival, rng: random.Random) -> Iterator[float]:
    """Send times in seconds from the start: every 1/rate, or a Poisson process of that rate."""
    if arrival == "uniform":
        for number in itertools.count():
            yield number / rate
    offset = 0.0
    while True:
        yield offset
        offset += rng.expovariate(rate)


async def open_loop(
    sender: RequestSender,
    config: LoadConfig,
    first_index: int,
    requests: int | None,
    duration: float | None,
    origin: float,
    rng: random.Random,
    stop: asyncio.Event,
) -> list[RequestRecord]:
    """Starts each request at its scheduled time, never waiting for earlier ones."""
    assert config.rate is not None
    start = time.monotonic()
    tasks = []
    for number, offset in enumerate(arrival_offsets(config.rate, config.arrival, rng)):
        if (requests is not None and number >= requests) or (
            duration is not None and offset >= duration
        ):
            break
        due = start + offset
        delay = due - time.monotonic()
        if delay > _STOP_CHECK:  # a long gap: wake up early on a stop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        elif delay > 0:
            await asyncio.sleep(delay)
        if stop.is_set():
            break
        tasks.append(asyncio.create_task(sender.send(first_index + number, due - origin)))
    return list(await asyncio.gather(*tasks))


def _split(total: int | None, parts: int) -> list[int | None]:
    if total is None:
        return [None] * parts
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _rounds(
    senders: Sequence[RequestSender], config: LoadConfig, origin: float, stop: asyncio.Event
) -> tuple[list[list[RequestRecord]], list[float]]:
    """Each target's records and load time; several targets take turns, round by round."""
    records: list[list[RequestRecord]] = [[] for _ in senders]
    walls = [0.0 for _ in senders]
    rounds = config.rounds if len(senders) > 1 else 1
    duration = None if config.duration is None else config.duration / rounds
    first = 0  # request numbers (and so prompts) continue from round to round
    for count in _split(config.requests, rounds):
        if stop.is_set():
            break
        next_first = first
        for position, sender in enumerate(senders):
            began = time.monotonic()
            if config.mode == "closed":
                got = await closed_loop(sender, config, first, count, duration, origin, stop)
            else:
                # The same seed per round for every target: they see the same arrivals.
                rng = random.Random(f"{config.seed}-{first}")
                got = await open_loop(sender, config, first, count, duration, origin, rng, stop)
            walls[position] += time.monotonic() - began
            records[position].extend(got)
            next_first = max([next_first, *(r.index + 1 for r in got)])
        first = next_first
    return records, walls


async def preflight(
    channel: grpc.aio.Channel,
    target: str,
    model: str,
    wait: float,
    metadata: tuple[tuple[str, str], ...] | None = None,
) -> None:
    """Fails early, with a clear message, on a target that is down, refuses the
    credentials, or lacks the model."""
    try:
        await asyncio.wait_for(channel.channel_ready(), wait)
    except TimeoutError:
        raise BenchError(f"cannot connect to {target} (waited {wait:g} s)") from None
    list_models = channel.unary_unary(
        "/switchyard.v1.LLMService/ListModels",
        request_serializer=pb.ListModelsRequest.SerializeToString,
        response_deserializer=pb.ListModelsResponse.FromString,
    )
    try:
        response = await list_models(pb.ListModelsRequest(), timeout=wait, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        message = f"{target}: ListModels failed: {error.code().name} {error.details()}"
        raise BenchError(message) from None
    names = {name for m in response.models for name in (m.id, *m.aliases)}
    if model not in names:
        available = ", ".join(sorted(m.id for m in response.models)) or "none"
        raise BenchError(f"model {model!r} is not served at {target}; available: {available}")


async def run_load(
    targets: Sequence[str],
    config: LoadConfig,
    progress: TextIO | None = None,
    connect_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
    connection: Connection | None = None,
) -> list[TargetResult]:
    """Runs the load against each target (alternating rounds when there are several).

    Setting ``stop`` ends the run early: no new requests, those in flight finish.
    ``connection`` (TLS, API key) applies to every target; default: plaintext, no key.
    """
    stop = stop or asyncio.Event()
    connection = connection or Connection()
    metadata = connection.metadata
    channels = [connection.aio_channel(t) for t in targets]
    try:
        for channel, target in zip(channels, targets, strict=True):
            await preflight(channel, target, config.model, connect_timeout, metadata)
        payloads = request_payloads(config)
        origin = time.monotonic()
        counters = [LiveCounters() for _ in targets]
        senders = [
            RequestSender(channel, payloads, config, origin, c, metadata)
            for channel, c in zip(channels, counters, strict=True)
        ]
        labels = [""] if len(targets) == 1 else [f"#{i + 1}" for i in range(len(targets))]
        line = ProgressLine(progress, lambda: list(zip(labels, counters, strict=True)))
        ticker = asyncio.create_task(line.run())
        try:
            records, walls = await _rounds(senders, config, origin, stop)
        finally:
            ticker.cancel()
            line.finish()
    finally:
        for channel in channels:
            await channel.close(grace=None)
    return [
        TargetResult(target, sorted(r, key=lambda x: x.index), wall)
        for target, r, wall in zip(targets, records, walls, strict=True)
    ]
