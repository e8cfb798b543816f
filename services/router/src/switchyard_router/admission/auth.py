"""API keys: who is calling, which routes they may use, and their limits (counted by
the fleet state, ``fleet``).

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
from switchyard_router.config import AuthConfig
from switchyard_router.fleet import KeyLimits
from switchyard_router.request_path.routing import Route, RouteTable

AUTHORIZATION = "authorization"
_BEARER = "bearer "


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its key's id, the routes it may use, its limits."""

    id: str
    models: frozenset[str] | None  # None: every route
    limits: KeyLimits | None  # None: no rate limits or budget
    cache_scope: str = ""
    """Callers with the same scope share cached answers (the key's id by default)."""


def _unauthenticated(message: str) -> StatusError:
    return StatusError(grpc.StatusCode.UNAUTHENTICATED, message, reason="UNAUTHENTICATED")


class Guard:
    """Authenticates calls against the configured keys and applies their limits."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.open_services = frozenset(config.open_services)
        self._keys: list[tuple[bytes, Principal]] = []
        for key in config.keys:
            limits = KeyLimits.of(
                key.id,
                key.requests_per_minute,
                key.request_burst,
                key.tokens_per_minute,
                key.token_burst,
                key.token_budget,
            )
            models = frozenset(key.models) if key.models is not None else None
            scope = key.cache_scope or key.id
            self._keys.append((key.digest, Principal(key.id, models, limits, scope)))

    @property
    def key_ids(self) -> set[str]:
        """The configured keys' ids."""
        return {principal.id for _, principal in self._keys}

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
