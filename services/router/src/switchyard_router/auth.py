"""API keys: who is calling, which routes they may use, and their rate limits.

Callers send ``authorization: Bearer <key>``. The router keeps only each
key's SHA-256; it hashes what the caller sent and compares it with every
configured hash in constant time (no early exit), so neither the key nor
which hash came close shows in the timing. Keys and hashes never appear in
logs, errors or spans: a key is named by its configured ``id``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from switchyard_common.status import StatusError, model_not_found
from switchyard_router.config import APIKeyConfig, AuthConfig
from switchyard_router.quota import KeyLimiter
from switchyard_router.routing import Route, RouteTable

AUTHORIZATION = "authorization"
_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its key's id, the routes it may use, its limiter."""

    id: str
    models: frozenset[str] | None  # None: every route
    limiter: KeyLimiter | None  # None: no rate limits


def _unauthenticated(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.UNAUTHENTICATED, message, reason="UNAUTHENTICATED")


class Guard:
    """Authenticates calls against the configured keys and applies their limits."""

    def __init__(self, config: AuthConfig, previous: Guard | None = None) -> None:
        self.config = config
        self.open_services = frozenset(config.open_services)
        kept = previous.limiters if previous is not None else {}
        self.limiters: dict[str, KeyLimiter] = {}
        self._keys: list[tuple[bytes, Principal]] = []
        for key in config.keys:
            limiter = self._limiter(key, kept.get(key.id))
            if limiter is not None:
                self.limiters[key.id] = limiter
            models = frozenset(key.models) if key.models is not None else None
            self._keys.append((key.digest, Principal(key.id, models, limiter)))

    @staticmethod
    def _limiter(key: APIKeyConfig, previous: KeyLimiter | None) -> KeyLimiter | None:
        if key.requests_per_minute is None and key.tokens_per_minute is None:
            return None
        fresh = KeyLimiter(key)
        # A reload that leaves a key's limits alone keeps its buckets (no free refill).
        return previous if previous is not None and previous.settings == fresh.settings else fresh

    def authenticate(self, metadata: Iterable[Any] | None) -> Principal:
        """The caller's principal, or UNAUTHENTICATED (never echoing what was sent)."""
        header: str | bytes | None = None
        for key, value in metadata or ():
            if key == AUTHORIZATION:
                header = value
                break
        if header is None:
            raise _unauthenticated(
                "missing API key: send the metadata `authorization: Bearer <key>`"
            )
        if isinstance(header, bytes) or header[: len(_BEARER)].lower() != _BEARER:
            raise _unauthenticated("malformed authorization metadata: expected `Bearer <key>`")
        token = header[len(_BEARER) :].strip()
        if not token:
            raise _unauthenticated("malformed authorization metadata: the key is empty")
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for configured, principal in self._keys:  # all of them: constant time
            if hmac.compare_digest(digest, configured):
                found = principal
        if found is None:
            raise _unauthenticated("invalid API key")
        return found

    @staticmethod
    def route(principal: Principal, table: RouteTable, model: str) -> Route:
        """The route, if this caller may use it: PERMISSION_DENIED naming the model if
        not; NOT_FOUND lists only the routes the caller may use."""
        if principal.models is None:
            return table.route(model)
        if model and model not in table.routes:
            raise model_not_found(model, sorted(principal.models & table.routes.keys()))
        route = table.route(model)  # INVALID_ARGUMENT for an empty name
        if route.model not in principal.models:
            raise StatusError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this API key may not use model {route.model!r}",
                reason="MODEL_NOT_ALLOWED",
                metadata={"model": route.model},
            )
        return route
