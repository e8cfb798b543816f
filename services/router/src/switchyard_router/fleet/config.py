"""Configuration of the router's fleet state: where limits and budgets are counted
(``limits_backend``), the Redis that fleets share (``redis``), the response cache
(``response_cache``, and ``cache`` on a route) and token budgets (``token_budget``
on an API key).

    limits_backend: redis            # local (default: per router process) | redis
    redis:
      url: "redis://switchyard-redis:6379/0"
      password_file: /var/run/switchyard/redis/password
      when_unreachable: local        # local: keep serving on local limits | refuse
    response_cache:
      backend: memory                # memory (per process, default) | redis
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator, model_validator

LimitsBackend = Literal["local", "redis"]
CacheBackend = Literal["memory", "redis"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisTLSConfig(_Strict):
    """TLS to Redis (a ``rediss://`` URL): the CA that signed it, and a client
    certificate when Redis asks for one."""

    ca_file: FilePath | None = Field(default=None, description="PEM CA bundle (unset: system)")
    cert_file: FilePath | None = Field(default=None, description="client certificate (mTLS)")
    key_file: FilePath | None = Field(default=None, description="client private key (mTLS)")

    @model_validator(mode="after")
    def _pair(self) -> RedisTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (both for mutual TLS, or neither)")
        return self


class RedisConfig(_Strict):
    """``redis:``: the Redis every router replica of a fleet shares."""

    url: str = Field(
        description="redis://host:port/db, rediss://host:port/db (TLS) or unix:///path/redis.sock"
    )
    username: str | None = Field(default=None, description="ACL user (unset: default user)")
    password_file: FilePath | None = Field(
        default=None,
        description="a file holding the password (a mounted Secret), re-read on reload",
    )
    tls: RedisTLSConfig | None = Field(default=None, description="with a rediss:// URL")
    timeout_seconds: float = Field(
        default=0.5,
        gt=0,
        description="per operation; a slower or failed one switches to local limits",
    )
    when_unreachable: Literal["local", "refuse"] = Field(
        default="local",
        description="while Redis cannot be reached: local (keep serving on each router's own "
        "limits: fail open) or refuse (UNAVAILABLE for keys with limits: fail closed)",
    )
    probe_seconds: float = Field(
        default=1.0, gt=0, description="while unreachable, how often Redis is tried again"
    )
    key_prefix: str = Field(
        default="switchyard", min_length=1, description="prefix of every key the router writes"
    )
    max_connections: int = Field(default=64, ge=1, description="connections per router process")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            # Never echo the URL: it may carry a password.
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return url

    @model_validator(mode="after")
    def _tls_only_with_rediss(self) -> RedisConfig:
        if self.tls is not None and urlsplit(self.url).scheme != "rediss":
            raise ValueError("tls: needs a rediss:// url")
        return self

    def password(self) -> str | None:
        """The password from ``password_file`` (None without one)."""
        if self.password_file is None:
            return None
        return self.password_file.read_text().strip() or None


class ResponseCacheConfig(_Strict):
    """``response_cache:``: where cached answers live and how much of them.

    Routes opt in with their own ``cache:``; without one, nothing is cached."""

    backend: CacheBackend = Field(
        default="memory",
        description="memory (each router process its own) or redis (the fleet shares it)",
    )
    max_entries: int = Field(default=10_000, ge=1, description="memory backend: answers kept")
    max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="memory backend: bytes of answers kept"
    )
    max_entry_bytes: int = Field(
        default=1024 * 1024, ge=64, description="a larger answer is not cached (either backend)"
    )


class RouteCacheConfig(_Strict):
    """``cache:`` of a route: its answers are replayed to identical requests."""

    ttl_seconds: float = Field(default=300.0, gt=0, description="how long an answer is replayed")
    scope: Literal["key", "shared"] = Field(
        default="key",
        description="key: each API key (or keys with the same cache_scope) has its own "
        "answers; shared: every caller of the route shares them",
    )
    nondeterministic: bool = Field(
        default=False,
        description="also cache requests that sample (temperature unset or above 0 and no "
        "seed); by default only greedy or seeded requests are cached",
    )


class TokenBudgetConfig(_Strict):
    """``token_budget:`` of an API key: prompt + completion tokens per calendar period
    (UTC). Each request reserves tokens at admission and settles to its usage."""

    per_day: int | None = Field(default=None, ge=1, description="tokens per UTC day")
    per_month: int | None = Field(default=None, ge=1, description="tokens per UTC month")
    reserve_tokens: int = Field(
        default=1024,
        ge=1,
        description="reserved for a request without sampling.max_tokens (a stream goes on "
        "past it while the budget lasts)",
    )

    @model_validator(mode="after")
    def _some_period(self) -> TokenBudgetConfig:
        if self.per_day is None and self.per_month is None:
            raise ValueError("set per_day, per_month or both")
        return self
