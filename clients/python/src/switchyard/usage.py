"""Usage events: one per call, with tokens and latency, for metering and budgets.

from switchyard import Client, UsageMeter

meter = UsageMeter()
with Client("localhost:50051", on_usage=meter) as client:
    client.generate("smollm2-135m-instruct", "Hello")
print(meter.total_tokens, meter.by_model())

``on_usage`` takes any callable; it runs in the calling thread (for
``AsyncClient``, on the event loop: keep it quick) once per call, when the
call ends: on its result, its error, or, for a stream, its last chunk,
``close()``, or its garbage collection when dropped unread. An exception it
raises reaches the caller (except from a garbage-collected stream, where Python
can only print it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from switchyard.errors import APIError
from switchyard.types import Completion, FinishReason, StreamChunk, Usage


@dataclass(frozen=True)
class UsageEvent:
    """What one call to the service cost.

    Attributes:
        method: ``generate``, ``chat`` or ``stream``.
        model: the model name the call asked for.
        served_model: the model that answered (a route may map names); "" on error.
        backend: the backend kind that answered; "" on error.
        usage: prompt and completion tokens as the server counted them (zero on
            error, or for a stream closed before its last chunk).
        latency: seconds from the call to its end, measured by the client
            (retries and back-off included).
        time_to_first_token: for streams, seconds until the first chunk arrived.
        attempts: tries made (unary calls are retried on UNAVAILABLE /
            RESOURCE_EXHAUSTED).
        finish_reason: why the generation ended; None on error.
        error: the error the call raised, if any.
    """

    method: str
    model: str
    served_model: str
    backend: str
    usage: Usage
    latency: float
    time_to_first_token: float | None = None
    attempts: int = 1
    finish_reason: FinishReason | None = None
    error: APIError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens

    @property
    def total_tokens(self) -> int:
        return self.usage.total_tokens


UsageCallback = Callable[[UsageEvent], object]
"""The type of ``on_usage``: called with each :class:`UsageEvent`."""


def completion_event(
    method: str, model: str, started: float, attempts: int, result: Completion | APIError
) -> UsageEvent:
    """The event for a finished unary call (``started`` is a ``time.monotonic()``)."""
    latency = time.monotonic() - started
    if isinstance(result, APIError):
        return UsageEvent(method, model, "", "", Usage(), latency, None, attempts, None, result)
    return UsageEvent(
        method,
        model,
        result.model,
        result.backend,
        result.usage,
        latency,
        None,
        attempts,
        result.finish_reason,
    )


class StreamUsageRecorder:
    """Follows one stream and reports its event once, when it ends."""

    def __init__(self, callback: UsageCallback, model: str) -> None:
        self._callback = callback
        self._model = model
        self._started = time.monotonic()
        self._first: float | None = None
        self._last: StreamChunk | None = None
        self._done = False

    def chunk(self, chunk: StreamChunk) -> None:
        if self._first is None:
            self._first = time.monotonic() - self._started
        if chunk.finish_reason is not None:
            self._last = chunk

    def finish(self, error: APIError | None = None, *, closed: bool = False) -> None:
        """Reports the event (only the first time it is called)."""
        if self._done:
            return
        self._done = True
        last = self._last
        if error is not None:
            finish: FinishReason | None = None
        elif last is not None:
            finish = last.finish_reason
        else:
            finish = FinishReason.CANCELLED if closed else None
        event = UsageEvent(
            method="stream",
            model=self._model,
            served_model=last.model if last else "",
            backend=last.backend if last else "",
            usage=(last.usage or Usage()) if last else Usage(),
            latency=time.monotonic() - self._started,
            time_to_first_token=self._first,
            finish_reason=finish,
            error=error,
        )
        self._callback(event)


class UsageMeter:
    """Adds up usage events; pass it as ``on_usage`` (it is thread-safe).

    ``events`` keeps every event; the properties sum them.
    """

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: UsageEvent) -> None:
        with self._lock:
            self.events.append(event)

    @property
    def calls(self) -> int:
        return len(self.events)

    @property
    def errors(self) -> int:
        return sum(1 for event in self.events if not event.ok)

    @property
    def prompt_tokens(self) -> int:
        return sum(event.prompt_tokens for event in self.events)

    @property
    def completion_tokens(self) -> int:
        return sum(event.completion_tokens for event in self.events)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def by_model(self) -> dict[str, Usage]:
        """Tokens per requested model name."""
        totals: dict[str, Usage] = {}
        with self._lock:
            events = list(self.events)
        for event in events:
            seen = totals.get(event.model, Usage())
            totals[event.model] = Usage(
                seen.prompt_tokens + event.prompt_tokens,
                seen.completion_tokens + event.completion_tokens,
            )
        return totals
