"""A consistent-hash ring: keys mapped onto members placed by their names alone.

Each member gets ``POINTS_PER_MEMBER`` points on a 64-bit ring, at the stable hash
(BLAKE2b, the same in every process and on every machine, unlike ``hash()``) of
its name and the point's number. A key's members, in order, are those whose
points follow the key's own hash clockwise. Placement depends on nothing but the
names, so every process that knows the same members builds the same ring; a
member that joins takes keys only from the arcs its points cut, and one that
leaves hands only its own keys to the members after it (Karger et al., 1997).
With 100 points each, members' shares of the ring differ by about 10%.

Pure Python with no I/O: the picker (``picker.PrefixAffinity``) walks it once per
pick and rebuilds it only when a target's endpoints change.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

POINTS_PER_MEMBER = 100

T = TypeVar("T")


def stable_hash(data: bytes) -> int:
    """A 64-bit hash of ``data`` that every process computes alike."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing(Generic[T]):
    """Members by name on a ring; :meth:`walk` gives a key's members in order."""

    __slots__ = ("_count", "_owners", "_points")

    def __init__(self, members: Mapping[str, T]) -> None:
        placed = sorted(
            (stable_hash(f"{name}#{index}".encode()), name)
            for name in members
            for index in range(POINTS_PER_MEMBER)
        )
        self._points = [point for point, _ in placed]
        self._owners = [members[name] for _, name in placed]
        self._count = len(members)

    def walk(self, key: bytes) -> Iterator[T]:
        """Every member once, starting with the key's own and then in ring order
        (the order its keys go to when it cannot take them)."""
        owners = self._owners
        if not owners:
            return
        size = len(owners)
        index = bisect.bisect_left(self._points, stable_hash(key))
        first = owners[index % size]
        yield first
        if self._count == 1:
            return
        seen = [first]
        for step in range(1, size):
            owner = owners[(index + step) % size]
            if owner not in seen:
                yield owner
                seen.append(owner)
                if len(seen) == self._count:
                    return
