"""Stop sequences over streamed text, for backends whose engine does not apply them."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Finds stop sequences in text arriving piece by piece.

    Text that could be the start of a stop sequence is held back until it is
    known not to be, so a stop sequence is never partly sent to the client.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Adds text; returns (text safe to emit, the stop sequence matched or None)."""
        if not self._stops:
            return text, None
        buffer = self._held + text
        match_at, matched = len(buffer) + 1, None
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and at < match_at:
                match_at, matched = at, stop
        if matched is not None:
            self._held = ""
            return buffer[:match_at], matched
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:length]):
                    keep = length
                    break
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """Returns held-back text at the end of generation."""
        held, self._held = self._held, ""
        return held
