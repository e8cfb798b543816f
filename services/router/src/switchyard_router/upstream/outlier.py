"""Outlier detection: passive health from the outcomes of attempts, as Envoy's.

Consecutive failed attempts on an endpoint (UNAVAILABLE, a per-try timeout) eject it
for a back-off of ``base_ejection_seconds`` doubled for each ejection in a row, up to
``max_ejection_seconds``. Two rules keep ejection from causing an outage:

- **The cap** (``max_ejection_percent``): never more than that share of a cluster's
  endpoints is ejected at once (rounded down, but at least one unless the share is
  0). An ejection past the cap is not made, and is counted as an overflow: failures
  that hit every endpoint (a bad deploy, a network blip) cannot empty a cluster.
- **Un-ejection on health** (``successful_active_health_check_uneject_host``): a
  fresh SERVING on the endpoint's health stream (its first report after a
  reconnect, or SERVING after NOT_SERVING) ends the ejection at once, so a restarted
  replica takes requests as soon as it says it can. The multiplier stays: an
  endpoint that fails again soon after pays the doubled back-off. It resets once
  the endpoint has served successfully for as long as its last back-off.

An ejection ends by a timer rather than by comparing clocks at every pick, so each
change bumps the cluster's :class:`~switchyard_router.load_balancing.picker.Epoch` and the
pickers' counts of healthy endpoints stay exact.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from switchyard_router import metrics
from switchyard_router.config import OutlierDetectionConfig
from switchyard_router.load_balancing.picker import Epoch

log = logging.getLogger("switchyard.router.outlier")


@dataclass(slots=True)
class EjectionState:
    """One endpoint's outlier-detection state."""

    consecutive_failures: int = 0
    """Failed attempts since its last success."""
    ejections: int = 0
    """Ejections in a row: the back-off's multiplier."""
    ejected: bool = False
    ejected_until: float = 0.0
    """``time.monotonic()`` at which the current ejection ends by itself."""
    reason: str = ""
    """Why it was last ejected (empty if never)."""
    backoff: float = 0.0
    """The last ejection's length, in seconds."""
    returned_at: float = 0.0
    """When the last ejection ended."""
    timer: asyncio.TimerHandle | None = None


class Ejectable(Protocol):
    """What outlier detection reads of an endpoint (``endpoints.Endpoint`` is one)."""

    address: str
    ejection: EjectionState


class OutlierDetector:
    """Outlier detection for one cluster's endpoints."""

    def __init__(
        self,
        cluster: str,
        config: OutlierDetectionConfig,
        endpoints: Mapping[str, Ejectable],
        epoch: Epoch,
    ) -> None:
        self.cluster = cluster
        self.config = config
        self.endpoints = endpoints
        """The cluster's endpoints, kept current as they join and leave."""
        self.epoch = epoch
        self.overflows = 0
        """Ejections the cap refused."""

    def ejected_count(self) -> int:
        """Endpoints of the cluster ejected now."""
        return sum(e.ejection.ejected for e in self.endpoints.values())

    def max_ejected(self) -> int:
        """How many endpoints may be ejected at once (``max_ejection_percent``)."""
        percent = self.config.max_ejection_percent
        if percent <= 0:
            return 0
        return max(1, math.floor(len(self.endpoints) * percent / 100))

    def record_success(self, endpoint: Ejectable) -> None:
        """An attempt on ``endpoint`` succeeded."""
        state = endpoint.ejection
        state.consecutive_failures = 0
        if (
            state.ejections
            and not state.ejected
            and time.monotonic() - state.returned_at >= state.backoff
        ):
            state.ejections = 0  # good for as long as it was out: forgiven

    def record_failure(self, endpoint: Ejectable, reason: str) -> None:
        """An attempt on ``endpoint`` failed in a way another endpoint could fix."""
        state = endpoint.ejection
        state.consecutive_failures += 1
        if state.consecutive_failures < self.config.consecutive_failures or state.ejected:
            return
        failures = state.consecutive_failures
        state.consecutive_failures = 0
        if self.ejected_count() >= self.max_ejected():
            self.overflows += 1
            metrics.EJECTIONS_OVERFLOW.labels(self.cluster).inc()
            log.warning(
                "%s (%s): not ejected after %d consecutive failures (%s): %d of %d endpoints "
                "are ejected already (max_ejection_percent %g)",
                endpoint.address,
                self.cluster,
                failures,
                reason,
                self.ejected_count(),
                len(self.endpoints),
                self.config.max_ejection_percent,
            )
            return
        state.ejections += 1
        seconds = min(
            self.config.base_ejection_seconds * 2 ** (state.ejections - 1),
            self.config.max_ejection_seconds,
        )
        state.ejected = True
        state.backoff = seconds
        state.ejected_until = time.monotonic() + seconds
        state.reason = f"{failures} consecutive failures: {reason}"
        state.timer = asyncio.get_running_loop().call_later(
            seconds, self._end_ejection, endpoint, "its back-off ended"
        )
        self.epoch.bump()
        metrics.EJECTIONS.labels(self.cluster, endpoint.address).inc()
        metrics.EJECTIONS_ACTIVE.labels(self.cluster).inc()
        log.warning(
            "%s (%s): ejected for %.1fs after %s",
            endpoint.address,
            self.cluster,
            seconds,
            state.reason,
        )

    def health_check_passed(self, endpoint: Ejectable) -> None:
        """A fresh SERVING on ``endpoint``'s health stream: ends its ejection, if the
        cluster un-ejects on health."""
        if endpoint.ejection.ejected and self.config.successful_active_health_check_uneject_host:
            self._end_ejection(endpoint, "its health stream says SERVING again")

    def forget(self, endpoint: Ejectable) -> None:
        """``endpoint`` left the cluster: its ejection timer goes too."""
        state = endpoint.ejection
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.ejected:
            state.ejected = False
            metrics.EJECTIONS_ACTIVE.labels(self.cluster).dec()

    def _end_ejection(self, endpoint: Ejectable, why: str) -> None:
        state = endpoint.ejection
        if not state.ejected:
            return
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        state.ejected = False
        state.ejected_until = 0.0
        state.returned_at = time.monotonic()
        self.epoch.bump()
        metrics.EJECTIONS_ACTIVE.labels(self.cluster).dec()
        log.info("%s (%s): back in rotation: %s", endpoint.address, self.cluster, why)
