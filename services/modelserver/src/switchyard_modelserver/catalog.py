"""The model catalog: ids and aliases, live states, and the health names they drive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from switchyard_common.status import StatusError, model_not_found
from switchyard_modelserver.domain import ModelCard, ModelState


@dataclass
class CatalogEntry:
    """One model's card and state."""

    card: ModelCard
    state: ModelState
    detail: str = ""


StateListener = Callable[[CatalogEntry], None]


class ModelCatalog:
    """Resolves model names and tracks each model's state."""

    def __init__(self, cards: list[ModelCard], on_change: StateListener | None = None) -> None:
        self._entries = {card.id: CatalogEntry(card, ModelState.LOADING) for card in cards}
        self._names = self._index()
        self._on_change = on_change

    def _index(self) -> dict[str, str]:
        names = {model_id: model_id for model_id in self._entries}
        for model_id, entry in self._entries.items():
            for alias in entry.card.aliases:
                if names.setdefault(alias, model_id) != model_id:
                    raise ValueError(
                        f"alias {alias!r} of model {model_id!r} is already the name of "
                        f"model {names[alias]!r}"
                    )
        return names

    def entries(self) -> list[CatalogEntry]:
        """Every model, in a stable order."""
        return [self._entries[k] for k in sorted(self._entries)]

    def update(self, card: ModelCard, state: ModelState, detail: str) -> None:
        """Records a backend's report about one model."""
        entry = self._entries.setdefault(card.id, CatalogEntry(card, state))
        entry.card, entry.state, entry.detail = card, state, detail
        self._names = self._index()
        if self._on_change is not None:
            self._on_change(entry)

    def card(self, model_id: str) -> ModelCard:
        """A served model's card (what it can do)."""
        return self._entries[model_id].card

    def lookup(self, name: str) -> str | None:
        """The model id for a name, or None; never raises."""
        return self._names.get(name)

    def resolve(self, name: str) -> str:
        """The model id for a name; NOT_FOUND or UNAVAILABLE if it cannot serve now."""
        model_id = self._names.get(name)
        if model_id is None:
            raise model_not_found(name, sorted(self._entries))
        entry = self._entries[model_id]
        if entry.state is ModelState.LOADING:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                f"model {model_id} is still loading; retry shortly",
                reason="MODEL_LOADING",
                metadata={"model": model_id},
                retry_after=1.0,
            )
        if entry.state is ModelState.UNAVAILABLE:
            raise StatusError(
                grpc.StatusCode.UNAVAILABLE,
                f"model {model_id} is unavailable: {entry.detail or 'unknown reason'}",
                reason="MODEL_UNAVAILABLE",
                metadata={"model": model_id},
            )
        return model_id

    def health_names(self, entry: CatalogEntry) -> list[str]:
        """The gRPC health service names that follow one model (its id and aliases)."""
        return [entry.card.id, *entry.card.aliases]
