"""The live progress line of `switchyard bench` and the counters it shows."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class LiveCounters:
    """What the progress line shows; updated by every request."""

    sent: int = 0
    done: int = 0
    errors: int = 0
    in_flight: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))
    """The latest successful latencies (seconds), for a running median."""


class ProgressLine:
    """A live status line on stderr: rewritten in place on a terminal, one line a second else."""

    def __init__(self, out: TextIO | None, counters: Callable[[], list[tuple[str, LiveCounters]]]):
        self._out = out
        self._counters = counters
        self._tty = out is not None and out.isatty()
        self._origin = time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self._origin
        parts = []
        for label, c in self._counters():
            recent = sorted(c.latencies)
            p50 = f"{recent[len(recent) // 2] * 1000:.1f}ms" if recent else "-"
            prefix = f"{label}: " if label else ""
            parts.append(
                f"{prefix}sent {c.sent} done {c.done} errors {c.errors} "
                f"in-flight {c.in_flight} p50 {p50}"
            )
        return f"[{elapsed:6.1f}s] " + "  |  ".join(parts)

    async def run(self) -> None:
        if self._out is None:
            return
        interval = 0.25 if self._tty else 1.0
        while True:
            await asyncio.sleep(interval)
            self._write()

    def _write(self) -> None:
        assert self._out is not None
        if self._tty:
            self._out.write("\r" + self.line() + "\x1b[K")
        else:
            self._out.write(self.line() + "\n")
        self._out.flush()

    def finish(self) -> None:
        if self._out is not None:
            self._write()
            if self._tty:
                self._out.write("\n")
            self._out.flush()


def stderr_if_tty(force: bool) -> TextIO | None:
    """Where the progress line goes: stderr when it is a terminal or when asked for."""
    return sys.stderr if force or sys.stderr.isatty() else None
