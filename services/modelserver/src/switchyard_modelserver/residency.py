"""Which models are in memory: a budget, least-recently-used eviction, holds, swaps.

A backend whose models load on demand (llamacpp) keeps one
:class:`ModelResidency`. Every request *holds* its model from before it
queues until it ends (:meth:`ModelResidency.hold`); a hold loads the model if
it is not in memory and waits for that, up to ``load_wait_seconds``. A model
with a hold is never unloaded: to make room within the budget
(``max_loaded_models`` and/or ``memory_budget_bytes``) the least recently used
model *without* holds goes. When every loaded model is held, a load waits for
one to become idle (the same bound), then gives up with RESOURCE_EXHAUSTED and
RetryInfo, like a full queue.

A model whose file changes loads again *beside* the old copy (:meth:`replace`):
requests keep using the old copy until the new one is ready, then new requests
get the new one while those already running finish on the old one, which is
then freed. A model whose file is removed drains (:meth:`remove`): new requests
are refused, those holding it finish, then it is forgotten.

The backend supplies :class:`ModelLoader` (load one copy, free one copy once
its generations end); this module knows nothing of any engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import grpc

from switchyard_common.status import StatusError
from switchyard_modelserver import metrics
from switchyard_modelserver.domain import ModelState

log = logging.getLogger(__name__)

T = TypeVar("T")

StateReport = Callable[[str, ModelState, str], None]
"""Called with (model id, state, detail) whenever a model's state changes."""


class ModelLoader(Protocol[T]):
    """What a backend does for :class:`ModelResidency`."""

    async def load(self, model_id: str) -> T:
        """Loads a new copy of the model (beside any current one) and returns it."""
        ...

    async def free(self, model_id: str, copy: T) -> None:
        """Frees a copy once the generations running on it have ended."""
        ...


@dataclass(frozen=True)
class ResidencyLimits:
    """How much may be loaded at once, and how long a request waits for a load."""

    max_loaded_models: int | None = None
    memory_budget_bytes: int | None = None
    load_wait_seconds: float = 60.0

    @property
    def bounded(self) -> bool:
        """True when a budget applies (models then load on demand)."""
        return self.max_loaded_models is not None or self.memory_budget_bytes is not None


@dataclass
class _Slot(Generic[T]):
    model_id: str
    memory_bytes: int
    """What the next copy will take (the file on disk now)."""
    state: ModelState | None = None
    """None until first reported."""
    detail: str = ""
    error: StatusError | None = None
    """Why it cannot load, while state is UNAVAILABLE."""
    current: T | None = None
    current_bytes: int = 0
    retiring_bytes: int = 0
    """Old copies still finishing their generations."""
    holds: int = 0
    last_used: float = 0.0
    loading: asyncio.Task[None] | None = None
    unloading: asyncio.Event | None = None
    """Set while an unload drains the model: new holds wait for it."""
    removed: bool = False
    waiting_for_room: bool = False
    """Its load waits for a busy model to become idle (the budget is full)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class ResidentModel:
    """One model's place in memory, for ListLoaded."""

    model_id: str
    state: ModelState
    memory_bytes: int
    holds: int
    idle_seconds: float
    detail: str


@dataclass(frozen=True)
class BudgetUse:
    """The budget and what is in it."""

    memory_budget_bytes: int | None
    used_bytes: int
    max_loaded_models: int | None
    loaded_models: int


class ModelResidency(Generic[T]):
    """Keeps models in memory within a budget (see the module's docstring)."""

    def __init__(
        self, limits: ResidencyLimits, loader: ModelLoader[T], report: StateReport
    ) -> None:
        self.limits = limits
        self._loader = loader
        self._report = report
        self._slots: dict[str, _Slot[T]] = {}
        self._load_lock = asyncio.Lock()  # one load at a time: each makes room first
        self._room_changed = asyncio.Event()
        """Set (then replaced) when memory was freed or a hold released."""
        self._background: set[asyncio.Task[None]] = set()  # swaps: referenced until done

    # -- what is known --------------------------------------------------------

    def add(self, model_id: str, memory_bytes: int) -> None:
        """A model the backend can load (not loaded yet). A model being removed
        whose file came back stays, with its new size."""
        slot = self._slots.get(model_id)
        if slot is not None:
            slot.removed = False
            self.replace(model_id, memory_bytes)
            if slot.current is not None:
                self._set(slot, ModelState.READY)
            return
        slot = _Slot[T](model_id, memory_bytes)
        self._slots[model_id] = slot
        self._check_size(slot)

    def report_all(self) -> None:
        """Reports every model's state again (to a listener that just arrived)."""
        for slot in self._slots.values():
            if slot.state is not None:
                self._report(slot.model_id, slot.state, slot.detail)

    def current(self, model_id: str) -> T:
        """The copy new generations of a held model run on."""
        slot = self._slots[model_id]
        assert slot.current is not None, f"{model_id} used without a hold"
        return slot.current

    def loaded(self, model_id: str) -> T | None:
        """The current copy, or None when the model is not in memory."""
        slot = self._slots.get(model_id)
        return None if slot is None else slot.current

    def models(self) -> list[ResidentModel]:
        """Every known model, by id."""
        now = time.monotonic()
        return [
            ResidentModel(
                model_id=s.model_id,
                state=s.state or ModelState.UNLOADED,
                memory_bytes=(s.current_bytes + s.retiring_bytes) or s.memory_bytes,
                holds=s.holds,
                idle_seconds=0.0 if s.holds or not s.last_used else now - s.last_used,
                detail=s.detail,
            )
            for s in sorted(self._slots.values(), key=lambda s: s.model_id)
        ]

    def budget(self) -> BudgetUse:
        """The limits and how much of them the loaded models take."""
        return BudgetUse(
            memory_budget_bytes=self.limits.memory_budget_bytes,
            used_bytes=self._used_bytes(),
            max_loaded_models=self.limits.max_loaded_models,
            loaded_models=self._loaded_count(),
        )

    # -- requests -------------------------------------------------------------

    @asynccontextmanager
    async def hold(self, model_id: str) -> AsyncIterator[None]:
        """Keeps the model in memory for the block, loading it first if needed.

        UNAVAILABLE MODEL_LOADING (with RetryInfo) when the load takes longer than
        ``load_wait_seconds`` (it goes on meanwhile); FAILED_PRECONDITION when the
        budget can never hold the model; RESOURCE_EXHAUSTED when the budget is
        held by busy models for that long; UNAVAILABLE MODEL_UNAVAILABLE when the
        file does not load; UNAVAILABLE MODEL_REMOVED when its file is gone.
        """
        slot = self._slot(model_id)
        deadline = time.monotonic() + self.limits.load_wait_seconds
        while slot.unloading is not None:  # an unload drains it: wait, then load again
            await self._wait(slot.unloading.wait(), deadline, slot)
        slot.holds += 1
        try:
            await self._ensure_loaded(slot, deadline)
            yield
        finally:
            slot.holds -= 1
            slot.last_used = time.monotonic()
            slot.changed.set()
            slot.changed = asyncio.Event()
            self._notify_room()

    async def _ensure_loaded(self, slot: _Slot[T], deadline: float) -> None:
        while slot.current is None:
            if slot.removed:
                raise model_removed(slot.model_id)
            if slot.error is not None:  # kept until the file changes or an operator loads it
                raise slot.error
            task = slot.loading or self._start_load(slot)
            await self._wait(asyncio.shield(task), deadline, slot)  # raises the load's error

    async def _wait(self, waitable: Awaitable[object], deadline: float, slot: _Slot[T]) -> None:
        try:
            await _by(deadline, waitable)
        except TimeoutError:
            if slot.waiting_for_room:  # not slow: no room (the load goes on waiting)
                raise self._budget_busy(slot) from None
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                f"model {slot.model_id} is still loading after "
                f"{self.limits.load_wait_seconds:g}s (load_wait_seconds); retry shortly",
                reason="MODEL_LOADING",
                metadata={"model": slot.model_id},
                retry_after=1.0,
            ) from None

    def _slot(self, model_id: str) -> _Slot[T]:
        slot = self._slots.get(model_id)
        if slot is None or slot.removed:
            raise model_removed(model_id)
        return slot

    # -- operator calls -------------------------------------------------------

    async def load(self, model_id: str) -> None:
        """Loads the model now (as a request would) and returns once it is loaded;
        a model whose file failed to load is tried again."""
        slot = self._slot(model_id)
        if slot.error is not None and slot.error.code != grpc.StatusCode.FAILED_PRECONDITION:
            slot.error = None
        async with self.hold(model_id):
            pass

    async def unload(
        self, model_id: str, why: str = "an operator asked", reason: str = "operator"
    ) -> None:
        """Lets the requests holding the model finish (new ones wait), then frees it;
        ``why`` is logged, ``reason`` labels the metric."""
        slot = self._slot(model_id)
        if slot.loading is not None:
            await asyncio.gather(asyncio.shield(slot.loading), return_exceptions=True)
        if slot.unloading is not None:
            await slot.unloading.wait()
            return
        if slot.current is None:
            return
        slot.unloading = asyncio.Event()
        try:
            while slot.holds:
                await slot.changed.wait()
            await self._unload(slot, why, reason)
        finally:
            slot.unloading.set()
            slot.unloading = None

    # -- the models folder ----------------------------------------------------

    def replace(self, model_id: str, memory_bytes: int) -> None:
        """The model's file changed: a loaded model loads again beside the old copy
        and takes over once ready (or, where the budget cannot hold both copies, the
        old one drains and the next request loads the new file); an unloaded one
        loads the new file next time; one loading now loads again once it is done
        (that load may have read the old file)."""
        slot = self._slots.get(model_id)
        if slot is None or slot.removed:  # new, or back while it drained away
            self.add(model_id, memory_bytes)
            return
        slot.memory_bytes = memory_bytes
        slot.error = None
        if slot.current is None:
            if slot.loading is not None:
                self._in_background(self._replace_once_loaded(slot, slot.loading), model_id)
            else:
                self._check_size(slot)
            return
        if self._too_large(slot) is None:
            self._in_background(self._swap(slot), model_id)
        else:
            log.error(
                "model %s: its new file is larger than the memory budget; the old copy serves on",
                model_id,
            )

    def _in_background(self, work: Coroutine[Any, Any, None], model_id: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=f"replace {model_id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _replace_once_loaded(self, slot: _Slot[T], loading: asyncio.Task[None]) -> None:
        await asyncio.gather(asyncio.shield(loading), return_exceptions=True)
        if self._slots.get(slot.model_id) is slot and not slot.removed:
            self.replace(slot.model_id, slot.memory_bytes)

    def _fits_beside(self, slot: _Slot[T]) -> bool:
        """Whether the budget can ever hold the new copy beside the current one."""
        budget = self.limits.memory_budget_bytes
        return budget is None or slot.current_bytes + slot.memory_bytes <= budget

    async def _swap(self, slot: _Slot[T]) -> None:
        room = self._fits_beside(slot)
        async with self._load_lock:
            if slot.current is None or slot.removed:
                return  # unloaded meanwhile: the next load reads the new file
            try:
                if room:
                    try:
                        await self._make_room(
                            slot, time.monotonic() + self.limits.load_wait_seconds
                        )
                    except StatusError:  # the others are busy for that long
                        room = False
                fresh = await self._loader.load(slot.model_id) if room else None
            except Exception as error:  # keep serving the old copy
                log.error(
                    "model %s: the new file did not load (%s); the old copy serves on",
                    slot.model_id,
                    error,
                )
                return
            if fresh is not None:
                if slot.current is None:  # unloaded while the new copy loaded
                    await self._loader.free(slot.model_id, fresh)
                    return
                old, old_bytes = slot.current, slot.current_bytes
                slot.current, slot.current_bytes = fresh, slot.memory_bytes
                slot.retiring_bytes += old_bytes
                metrics.MODEL_LOADS.labels(slot.model_id).inc()
                metrics.MODEL_UNLOADS.labels(slot.model_id, "replaced").inc()
        if fresh is None:
            # No room for both copies: rather than serve the old file for good, it
            # drains (new requests wait for the new file, as during an UnloadModel).
            log.info(
                "model %s: no room for the new file beside the old copy; the old copy "
                "drains, then the new file loads",
                slot.model_id,
            )
            await self.unload(slot.model_id, "its file was replaced", "replaced")
            return
        log.info(
            "model %s: the new file took over; the old copy finishes its requests", slot.model_id
        )
        self._set(slot, ModelState.READY)
        try:
            await self._loader.free(slot.model_id, old)
        finally:
            slot.retiring_bytes -= old_bytes
            self._notify_room()

    async def remove(self, model_id: str) -> None:
        """The model's file is gone: refuse new requests, let held ones finish, forget it."""
        slot = self._slots.get(model_id)
        if slot is None or slot.removed:
            return
        slot.removed = True
        self._set(slot, ModelState.DRAINING, "its file was removed")
        if slot.loading is not None:
            await asyncio.gather(asyncio.shield(slot.loading), return_exceptions=True)
        while slot.holds:
            await slot.changed.wait()
        if not slot.removed:  # the file came back meanwhile
            return
        if slot.current is not None:
            await self._unload(slot, "its file was removed", "removed")
        if slot.removed and not slot.holds:
            del self._slots[model_id]
            self._report(model_id, ModelState.REMOVED, "")

    # -- loading and unloading ------------------------------------------------

    def _start_load(self, slot: _Slot[T]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(
            self._load(slot), name=f"load {slot.model_id}"
        )
        slot.loading = task

        def done(finished: asyncio.Task[None]) -> None:
            slot.loading = None
            if not finished.cancelled():
                finished.exception()  # its waiters got it; nobody else needs to

        task.add_done_callback(done)
        return task

    async def _load(self, slot: _Slot[T]) -> None:
        """One load (one at a time): make room, load, READY. Raises what the waiting
        requests should get; a file that does not load stays UNAVAILABLE."""
        async with self._load_lock:
            if slot.current is not None or slot.removed:
                return
            too_large = self._too_large(slot)
            if too_large is not None:
                self._fail(slot, too_large)
                raise too_large
            await self._make_room(slot, time.monotonic() + self.limits.load_wait_seconds)
            self._set(slot, ModelState.LOADING)
            started = time.monotonic()
            try:
                copy = await self._loader.load(slot.model_id)
            except Exception as error:  # a bad file must not take the other models down
                log.exception("model %s failed to load", slot.model_id)
                failed = StatusError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"model {slot.model_id} is unavailable: failed to load: {error}",
                    reason="MODEL_UNAVAILABLE",
                    metadata={"model": slot.model_id},
                )
                self._fail(slot, failed)
                raise failed from None
            slot.current, slot.current_bytes = copy, slot.memory_bytes
            metrics.MODEL_LOADS.labels(slot.model_id).inc()
            log.info("model %s loaded in %.2fs", slot.model_id, time.monotonic() - started)
            self._set(slot, ModelState.READY)

    async def _make_room(self, slot: _Slot[T], deadline: float) -> None:
        """Unloads the least recently used idle models until ``slot`` fits; waits for
        a held model to become idle when none is (RESOURCE_EXHAUSTED at ``deadline``)."""
        while True:
            changed = self._room_changed
            if self._fits(slot):
                return
            victim = self._least_recently_used_idle(exclude=slot)
            if victim is not None:
                why = f"least recently used, to make room for {slot.model_id}"
                await self._unload(victim, why, "lru")
                continue
            slot.waiting_for_room = True
            try:
                await _by(deadline, changed.wait())
            except TimeoutError:
                raise self._budget_busy(slot) from None
            finally:
                slot.waiting_for_room = False

    def _least_recently_used_idle(self, exclude: _Slot[T]) -> _Slot[T] | None:
        idle = [
            s
            for s in self._slots.values()
            if s is not exclude and s.current is not None and not s.holds and s.unloading is None
        ]
        return min(idle, key=lambda s: s.last_used, default=None)

    async def _unload(self, slot: _Slot[T], why: str, reason: str) -> None:
        """Frees the current copy; ``reason`` (lru, operator, removed) labels the metric."""
        copy, copy_bytes = slot.current, slot.current_bytes
        if copy is None:
            return
        metrics.MODEL_UNLOADS.labels(slot.model_id, reason).inc()
        slot.current, slot.current_bytes = None, 0
        slot.retiring_bytes += copy_bytes
        log.info("model %s unloaded: %s", slot.model_id, why)
        self._set(slot, ModelState.UNLOADED)
        try:
            await self._loader.free(slot.model_id, copy)
        finally:
            slot.retiring_bytes -= copy_bytes
            self._notify_room()

    def _notify_room(self) -> None:
        self._room_changed.set()
        self._room_changed = asyncio.Event()

    # -- the budget -----------------------------------------------------------

    def _used_bytes(self) -> int:
        return sum(s.current_bytes + s.retiring_bytes for s in self._slots.values())

    def _loaded_count(self) -> int:
        return sum(1 for s in self._slots.values() if s.current is not None or s.retiring_bytes)

    def _fits(self, slot: _Slot[T]) -> bool:
        """Whether one more copy of ``slot`` fits (a swap loads a second copy)."""
        limits = self.limits
        count = self._loaded_count() + (0 if slot.current is not None else 1)
        if limits.max_loaded_models is not None and count > limits.max_loaded_models:
            return False
        budget = limits.memory_budget_bytes
        return budget is None or self._used_bytes() + slot.memory_bytes <= budget

    def _too_large(self, slot: _Slot[T]) -> StatusError | None:
        budget = self.limits.memory_budget_bytes
        if budget is None or slot.memory_bytes <= budget:
            return None
        return StatusError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"model {slot.model_id} needs {slot.memory_bytes} bytes "
            f"({_mib(slot.memory_bytes)}) but memory_budget_bytes is {budget} "
            f"({_mib(budget)}): it cannot load on this server",
            reason="MODEL_TOO_LARGE",
            metadata={
                "model": slot.model_id,
                "needed_bytes": str(slot.memory_bytes),
                "memory_budget_bytes": str(budget),
            },
        )

    def _check_size(self, slot: _Slot[T]) -> None:
        too_large = self._too_large(slot)
        if too_large is not None:
            self._fail(slot, too_large)
        else:
            self._set(slot, ModelState.UNLOADED)

    def _budget_busy(self, slot: _Slot[T]) -> StatusError:
        busy = ", ".join(
            f"{s.model_id} ({s.holds} requests)"
            for s in self._slots.values()
            if s.current is not None and s.holds
        )
        return StatusError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"no room to load model {slot.model_id}: the memory budget is held by models "
            f"with requests in flight ({busy or 'none'}); retry later or elsewhere",
            reason="MEMORY_BUDGET_BUSY",
            metadata={"model": slot.model_id},
            retry_after=1.0,
        )

    # -- states ---------------------------------------------------------------

    def _fail(self, slot: _Slot[T], error: StatusError) -> None:
        slot.error = error
        self._set(slot, ModelState.UNAVAILABLE, error.message)

    def _set(self, slot: _Slot[T], state: ModelState, detail: str = "") -> None:
        if slot.removed:
            state, detail = ModelState.DRAINING, "its file was removed"
        if (slot.state, slot.detail) == (state, detail):
            return
        slot.state, slot.detail = state, detail
        self._report(slot.model_id, state, detail)


def model_removed(model_id: str) -> StatusError:
    """UNAVAILABLE MODEL_REMOVED: its file is gone from this server (retry elsewhere)."""
    return StatusError(
        grpc.StatusCode.UNAVAILABLE,
        f"model {model_id} was removed from this server; retry elsewhere",
        reason="MODEL_REMOVED",
        metadata={"model": model_id},
    )


async def _by(deadline: float, waitable: Awaitable[object]) -> None:
    """Awaits ``waitable`` until ``deadline`` (``time.monotonic()``); TimeoutError after."""
    await asyncio.wait_for(waitable, max(0.0, deadline - time.monotonic()))


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"
