"""How long a provider asks to be left alone: its retry and rate-limit headers
as seconds, for the RetryInfo of RESOURCE_EXHAUSTED and UNAVAILABLE."""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

_MAX_RETRY_AFTER = 86400.0  # a day: longer is a broken header, not advice
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ms|us|µs|ns|h|m|s)")


def retry_after(headers: Mapping[str, str], default: float = 1.0) -> float:
    """Seconds to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP
    date), else when the exhausted rate limit resets (OpenAI's ``x-ratelimit-reset-*``
    durations, Anthropic's ``anthropic-ratelimit-*-reset`` times). A header that
    cannot be read counts as absent: a vendor's odd header never fails the request."""
    lowered = {k.lower(): v.strip() for k, v in headers.items()}
    milliseconds = _seconds(lowered.get("retry-after-ms", ""))
    if milliseconds is not None:
        return milliseconds / 1000
    value = lowered.get("retry-after", "")
    seconds = _seconds(value)
    if seconds is None:
        seconds = _until(value, email.utils.parsedate_to_datetime)
    if seconds is None:
        seconds = _rate_limit_reset(lowered)
    return default if seconds is None else seconds


def _clamped(seconds: float) -> float | None:
    return max(0.0, min(seconds, _MAX_RETRY_AFTER)) if math.isfinite(seconds) else None


def _seconds(value: str) -> float | None:
    try:
        return _clamped(float(value))
    except ValueError:
        return None


def _until(value: str, parse: Callable[[str], datetime]) -> float | None:
    """Seconds from now until the time ``value`` names (None if it names none)."""
    try:
        moment = parse(value)
    except (ValueError, TypeError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _clamped(moment.timestamp() - time.time())


def _go_duration(value: str) -> float | None:
    """``6m0s``, ``1.5s``, ``20ms`` (OpenAI's reset headers), or plain seconds."""
    if _GO_DURATION.sub("", value) or not value:
        return _seconds(value)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return _clamped(sum(float(n) * scale[unit] for n, unit in _GO_DURATION.findall(value)))


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """When the rate limit that ran out resets (the latest one if several did, or if
    none says it ran out: the request may need more than one has left)."""
    resets: list[tuple[bool, float]] = []
    for name, value in headers.items():
        if name.startswith("x-ratelimit-reset-"):
            limit = name.removeprefix("x-ratelimit-reset-")
            remaining = headers.get(f"x-ratelimit-remaining-{limit}")
            seconds = _go_duration(value)
        elif name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            limit = name.removeprefix("anthropic-ratelimit-").removesuffix("-reset")
            remaining = headers.get(f"anthropic-ratelimit-{limit}-remaining")
            seconds = _until(value, datetime.fromisoformat)
        else:
            continue
        if seconds is not None:
            resets.append((remaining == "0", seconds))
    exhausted = [seconds for ran_out, seconds in resets if ran_out]
    return max(exhausted or [seconds for _, seconds in resets], default=None)
