"""The residency's answers to files replaced at awkward moments, in one process.

These races need a load held open at an exact point (a file replaced while its
model loads), which a real llama.cpp load cannot be made to do on cue; so the
residency runs here with a loader of the tests' own (``FileLoader``) that
implements the backend's side of it (``ModelLoader``: load a copy, free one) over
versions of a file instead of GGUF files. What the model server does around it
is tested with real servers in test_model_residency.py and test_model_folder.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from switchyard_modelserver.domain import ModelState
from switchyard_modelserver.models.residency import ModelResidency, ResidencyLimits

Copy = tuple[str, int]
"""A loaded copy: (model id, the file version it was read from)."""


class FileLoader:
    """Loads the version a model's file has when its load starts; a model's load
    waits for its gate when one is closed."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.freed: list[Copy] = []
        self.news = asyncio.Event()
        """Set whenever a copy was loaded or freed, or a state reported."""

    async def load(self, model_id: str) -> Copy:
        version = self.versions[model_id]  # llama.cpp opens the file first, then loads
        gate = self.gates.get(model_id)
        if gate is not None:
            await gate.wait()
        self.news.set()
        return model_id, version

    async def free(self, model_id: str, copy: Copy) -> None:
        self.freed.append(copy)
        self.news.set()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Waits for ``condition``, checked on each piece of news."""
        try:
            async with asyncio.timeout(5):
                while not condition():
                    self.news.clear()
                    await self.news.wait()
                    await asyncio.sleep(0)  # let the news's sender finish what it does
        except TimeoutError:
            pytest.fail(f"never: {what}")


def _residency(loader: FileLoader, **limits: object) -> tuple[ModelResidency[Copy], list[str]]:
    states: list[str] = []

    def report(model: str, state: ModelState, _: str) -> None:
        states.append(f"{model} {state.value}")
        loader.news.set()

    residency = ModelResidency[Copy](
        ResidencyLimits(load_wait_seconds=5, **limits),  # type: ignore[arg-type]
        loader,
        report,
    )
    return residency, states


async def _use(residency: ModelResidency[Copy], model_id: str) -> Copy:
    """What a request holding the model runs on."""
    async with residency.hold(model_id):
        return residency.current(model_id)


async def test_a_file_replaced_while_its_model_loads_is_loaded_again_once_that_load_ends() -> None:
    loader = FileLoader()
    loader.versions["m"] = 1
    loader.gates["m"] = asyncio.Event()
    residency, states = _residency(loader, max_loaded_models=2)
    residency.add("m", 100)
    first = asyncio.create_task(_use(residency, "m"))
    await loader.until(lambda: "m loading" in states, "m loading")  # it read version 1
    loader.versions["m"] = 2
    residency.replace("m", 100)
    loader.gates["m"].set()
    assert await first == ("m", 1)  # the load under way ends as it began
    await loader.until(lambda: residency.loaded("m") == ("m", 2), "the new file loaded")
    assert await _use(residency, "m") == ("m", 2)
    await loader.until(lambda: loader.freed == [("m", 1)], "the old copy freed")


async def test_a_replaced_file_that_cannot_load_beside_the_old_copy_takes_over_after_it() -> None:
    """Budget for one copy: the new file cannot load beside the old one, so the old one
    drains (the request holding it finishes on it) and is freed, and the next request
    loads the new file, rather than the old file serving for good."""
    loader = FileLoader()
    loader.versions["m"] = 1
    residency, states = _residency(loader, memory_budget_bytes=150)
    residency.add("m", 100)
    assert await _use(residency, "m") == ("m", 1)
    in_flight = residency.hold("m")
    await in_flight.__aenter__()
    loader.versions["m"] = 2
    residency.replace("m", 100)
    assert residency.current("m") == ("m", 1)  # the request in flight keeps its copy
    await in_flight.__aexit__(None, None, None)
    await loader.until(lambda: loader.freed == [("m", 1)], "the old copy drained and freed")
    assert await _use(residency, "m") == ("m", 2)
    assert ModelState.UNAVAILABLE.value not in " ".join(states)
