"""Provider health: a model turns UNAVAILABLE (health NOT_SERVING) after
consecutive provider failures, or at once when the provider rejects the
credentials, and READY again when a probe of the provider succeeds."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc

from switchyard_common.status import StatusError
from switchyard_modelserver.backends.base import StateReporter
from switchyard_modelserver.domain import ModelState

if TYPE_CHECKING:
    from switchyard_modelserver.backends.cloud.backend import CloudBackend

log = logging.getLogger(__name__)


class ProviderHealth:
    """Turns call outcomes into model states: the circuit breaker of a cloud backend."""

    def __init__(self, backend: CloudBackend, report: StateReporter) -> None:
        self._backend = backend
        self._report = report
        self._failures: dict[str, int] = {}
        self._down: dict[str, str] = {}
        self._probe: asyncio.Task[None] | None = None

    def up(self, model_id: str) -> None:
        self._failures[model_id] = 0
        if model_id in self._down:
            del self._down[model_id]
        self._report(self._backend.card(model_id), ModelState.READY, "")

    def down(self, model_id: str, detail: str) -> None:
        first = model_id not in self._down
        self._down[model_id] = detail
        self._report(self._backend.card(model_id), ModelState.UNAVAILABLE, detail)
        if first:
            log.warning("model %s is unavailable: %s", model_id, detail)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_up())

    def succeeded(self, model_id: str) -> None:
        self._failures[model_id] = 0

    def failed(self, model_id: str, error: StatusError) -> None:
        """Counts a failure that says the provider, not the request, is at fault."""
        reason = error.details.reason or ""
        if reason == "PROVIDER_CREDENTIALS_REJECTED":  # the key is wrong for every model
            for other in self._backend.model_ids():
                self.down(other, error.message)
            return
        if reason == "PROVIDER_PERMISSION_DENIED":  # the key may lack only this model
            self.down(model_id, error.message)
            return
        if error.code is not grpc.StatusCode.UNAVAILABLE:
            return
        count = self._failures.get(model_id, 0) + 1
        self._failures[model_id] = count
        if count >= self._backend.options.unhealthy_after_failures:
            self.down(model_id, f"{count} consecutive provider failures; last: {error.message}")

    async def _probe_until_up(self) -> None:
        while self._down:
            await asyncio.sleep(self._backend.options.probe_interval_seconds)
            self._backend.reload_secret()  # the operator may have fixed the key's file
            try:
                missing = await self._backend.check()
            except StatusError as error:
                log.info("provider probe failed: %s", error.message)
                continue
            for model_id in list(self._down):
                if model_id not in missing or not self._backend.authoritative_model_list:
                    log.info("model %s is available again", model_id)
                    self.up(model_id)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
