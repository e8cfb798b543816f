"""The model catalog: ids and aliases, live states, and the health names they drive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from switchyard_common.status import StatusError, model_not_found
from switchyard_modelserver.domain import ModelCard, ModelState
from switchyard_modelserver.models.residency import model_removed


@dataclass
class CatalogEntry:
    """One model's card and state."""

    card: ModelCard
    state: ModelState
    detail: str = ""
    servable_before: bool = False
    """It was loaded or loadable once: a later LOADING is a load on demand, not start-up."""

    @property
    def serving(self) -> bool:
        """What its health names say: SERVING while a request for it will be served
        here (loaded, or loadable on demand), NOT_SERVING while it loads at start,
        cannot load, or drains away."""
        if self.state in (ModelState.READY, ModelState.UNLOADED):
            return True
        return self.state is ModelState.LOADING and self.servable_before

    @property
    def starting(self) -> bool:
        """Loading for the first time (the server is not ready for it yet)."""
        return self.state is ModelState.LOADING and not self.servable_before


StateListener = Callable[[CatalogEntry], None]


class ModelCatalog:
    """Resolves model names and tracks each model's state."""

    def __init__(self, cards: list[ModelCard], on_change: StateListener | None = None) -> None:
        self._entries = {card.id: CatalogEntry(card, ModelState.LOADING) for card in cards}
        self._names = self._index()
        self._removed: dict[str, str] = {}
        """Names (ids and aliases) of models removed from this server, by model id: their
        requests get UNAVAILABLE MODEL_REMOVED (retry elsewhere), not NOT_FOUND."""
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
        """Records a backend's report about one model (REMOVED: forget it)."""
        if state is ModelState.REMOVED:
            removed = self._entries.pop(card.id, None)
            if removed is None:
                return
            removed.state, removed.detail = state, detail
            entry = removed
            self._removed.update(dict.fromkeys(self.health_names(removed), card.id))
        else:
            for name in (card.id, *card.aliases):
                self._removed.pop(name, None)
            entry = self._entries.setdefault(card.id, CatalogEntry(card, state))
            entry.card, entry.state, entry.detail = card, state, detail
            if state in (ModelState.READY, ModelState.UNLOADED):
                entry.servable_before = True
        self._names = self._index()
        if self._on_change is not None:
            self._on_change(entry)

    def card(self, model_id: str) -> ModelCard:
        """A served model's card (what it can do)."""
        return self._entries[model_id].card

    def lookup(self, name: str) -> str | None:
        """The model id for a name, or None; never raises."""
        return self._names.get(name)

    def resolve(self, name: str, loads_on_demand: bool = False) -> str:
        """The model id for a name; NOT_FOUND or UNAVAILABLE if it cannot serve now.

        With ``loads_on_demand`` (a backend with a residency) only a model being
        removed is refused here: loading, and why a model cannot load, is the
        residency's to say when the request holds it.
        """
        model_id = self._names.get(name)
        if model_id is None:
            if name in self._removed:  # a router retries it on a replica that has it
                raise model_removed(self._removed[name])
            raise model_not_found(name, sorted(self._entries))
        entry = self._entries[model_id]
        if entry.state is ModelState.DRAINING:
            raise model_removed(model_id)
        if loads_on_demand:
            return model_id
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
