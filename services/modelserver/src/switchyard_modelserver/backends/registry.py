"""Backend registry: backends are found by name through Python entry points.

A third party adds a backend without touching Switchyard by declaring, in its
own package::

    [project.entry-points."switchyard.backends"]
    mybackend = "my_package.backend:MyBackend"
"""

from __future__ import annotations

from importlib.metadata import entry_points

from switchyard_modelserver.backends.base import Backend

ENTRY_POINT_GROUP = "switchyard.backends"


class UnknownBackendError(LookupError):
    """No installed backend has the requested name."""


def available_backends() -> list[str]:
    """Names of every installed backend."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def backend_class(kind: str) -> type[Backend]:
    """Loads the backend class registered as ``kind``."""
    for entry_point in entry_points(group=ENTRY_POINT_GROUP, name=kind):
        loaded = entry_point.load()
        if not (isinstance(loaded, type) and issubclass(loaded, Backend)):
            raise TypeError(f"entry point {entry_point.value} is not a Backend subclass")
        return loaded
    raise UnknownBackendError(
        f"unknown backend {kind!r}; installed backends: {', '.join(available_backends()) or 'none'}"
        " (a backend's extra may be missing, e.g. switchyard-modelserver[llamacpp])"
    )
