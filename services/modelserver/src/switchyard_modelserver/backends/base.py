"""The backend interface every model server backend implements."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, ClassVar

import grpc
from pydantic import BaseModel, ConfigDict

from switchyard_common.status import StatusError, adapter_not_found
from switchyard_modelserver.domain import (
    AdapterInfo,
    BackendEvent,
    EngineLoad,
    GenerationRequest,
    ModelCard,
    ModelState,
)
from switchyard_modelserver.models.residency import ModelResidency

StateReporter = Callable[[ModelCard, ModelState, str], None]
"""Called by a backend as each model changes state: (card, state, detail)."""

_NO_ENGINE_LOAD = EngineLoad()


class BackendOptions(BaseModel):
    """Base of a backend's options model; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(abc.ABC):
    """One inference engine or provider.

    Lifecycle: construct (cheap, validates options) → ``models()`` (known ids,
    maybe before loading) → ``load()`` (may take minutes; reports each model's
    state) → ``generate()`` many times, concurrently → ``close()``.

    ``generate`` may first yield :class:`PromptCounted` (the prompt's length, so
    that usage is known if the request ends early), then yields :class:`Delta`
    events and ends with exactly one :class:`Finish`. If its consumer stops
    iterating (cancellation, deadline), the generator is closed and the backend
    must stop producing tokens.
    Expected failures are raised as ``switchyard.status.StatusError``.

    Optional: models that load on demand within a memory budget
    (:attr:`residency`, which the server holds around each request), and LoRA
    adapters (:meth:`adapters`, :meth:`check_adapter`, :meth:`load_adapter`,
    :meth:`unload_adapter`; ``GenerationRequest.adapter`` names one).
    """

    kind: ClassVar[str]
    options_model: ClassVar[type[BackendOptions]]
    remote: ClassVar[bool] = False
    """True when generation calls a remote provider (its spans are then CLIENT spans)."""
    formats_chats: ClassVar[bool] = False
    """True when the backend renders chat templates itself, so that a per-model
    chat-template override (``GenerationRequest.chat_template``) applies."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Backend:
        """Validates raw config options and builds the backend."""
        return cls(cls.options_model.model_validate(options))

    @abc.abstractmethod
    def __init__(self, options: Any) -> None: ...

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """The models this backend will serve (before or after loading)."""

    @abc.abstractmethod
    async def load(self, report: StateReporter) -> None:
        """Loads every model, reporting READY or UNAVAILABLE for each."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        """Generates for a validated request whose ``model`` is a served model id."""

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The tokens the request's input takes (prompt, or messages through the chat
        template, with its tools), as ``generate`` would count them. The default:
        UNIMPLEMENTED, for backends that cannot count exactly."""
        raise StatusError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"the {self.kind} backend cannot count tokens",
            reason="TOKEN_COUNT_UNSUPPORTED",
            metadata={"backend": self.kind},
        )

    def concurrency(self, model_id: str) -> int:
        """How many generations of one model may run at once (the rest queue)."""
        return 1

    def engine_load(self) -> EngineLoad:
        """The engine's load now (KV-cache usage, its own queue), for load reports:
        cheap, called from the event loop for every response. The default: nothing
        beyond the model server's own counts."""
        return _NO_ENGINE_LOAD

    async def failure(self) -> str:
        """Returns (with the reason) once the backend can never serve again, e.g.
        its engine process died; the server then exits non-zero so that it is
        restarted. The default never returns."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the backend's resources."""

    @property
    def residency(self) -> ModelResidency[Any] | None:
        """Which models are in memory, for a backend whose models load on demand
        (None: every model is loaded by :meth:`load` and stays)."""
        return None

    async def adapters(self, model_id: str) -> list[AdapterInfo]:
        """The LoRA adapters a request may name for the model (default: none)."""
        return []

    def check_adapter(self, model_id: str, name: str) -> None:
        """NOT_FOUND naming the adapter unless the model has it (default: it has none)."""
        raise adapter_not_found(name, model_id, [])

    async def load_adapter(self, model_id: str, name: str, path: str) -> None:
        """Makes adapter ``name`` (at ``path``, or found by name) available and loads it."""
        raise _unsupported(self.kind, "LoRA adapters")

    async def unload_adapter(self, model_id: str, name: str) -> None:
        """Frees adapter ``name`` once the requests using it finish."""
        raise _unsupported(self.kind, "LoRA adapters")


def _unsupported(kind: str, what: str) -> StatusError:
    return StatusError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"the {kind} backend does not support {what}",
        reason="NOT_SUPPORTED",
    )
