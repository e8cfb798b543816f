"""The model server's own types: what a backend receives and yields.

The servicer translates protobuf into these and back, so backends never see
protobuf and the contract can evolve without touching them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation ended (mirrors switchyard.v1.FinishReason)."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    ERROR = "error"
    CONTENT_FILTER = "content_filter"


class Capability(enum.Enum):
    """What a model can do (mirrors switchyard.v1.Capability)."""

    COMPLETION = "completion"
    CHAT = "chat"
    STREAMING = "streaming"
    LOGPROBS = "logprobs"


class ModelState(enum.Enum):
    """A model's live state (mirrors switchyard.v1.ModelStatus)."""

    LOADING = "loading"
    READY = "ready"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ChatTurn:
    """One chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class Sampling:
    """Validated sampling parameters; None means the backend's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class Continuation:
    """Output already produced for this request elsewhere (see the contract)."""

    text: str = ""
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: exactly one of ``prompt`` and ``messages`` is set."""

    model: str
    prompt: str | None
    messages: tuple[ChatTurn, ...] | None
    sampling: Sampling
    continuation: Continuation = Continuation()
    include_token_ids: bool = False
    deadline: float | None = None
    """When the caller stops waiting, on ``time.monotonic()``'s clock (None: no deadline)."""


@dataclass(frozen=True)
class ModelCard:
    """What ListModels reports about one model."""

    id: str
    context_length: int
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[Capability] = frozenset(
        {Capability.COMPLETION, Capability.CHAT, Capability.STREAMING}
    )


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the likeliest alternatives
    (id, text, logprob). Ids are 0 where the backend does not know them (cloud APIs)."""

    id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass
class Delta:
    """New output: text plus how many tokens produced it (and their ids, if known).

    ``logprobs`` has one entry per token when the request asked for logprobs.
    """

    text: str
    tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Finish:
    """The end of a generation, always the last item a backend yields."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str = ""
    cached_prompt_tokens: int = 0
    """Of ``prompt_tokens``, those the engine took from its prefix cache rather than
    computing them (0: none, or the engine does not say)."""


@dataclass
class PromptCounted:
    """Optional, before the first :class:`Delta`: the prompt's length in tokens, so
    usage is known even for a request that ends early (cancelled or failed)."""

    tokens: int


@dataclass(frozen=True)
class EngineLoad:
    """What a backend knows of its engine's load, beyond the model server's own
    queue (for the load reports routers read; see ``load_reporting``)."""

    kv_cache_usage: float | None = None
    """The share of the KV cache in use, 0..1 (None: the engine has none, or does
    not say)."""
    waiting: int = 0
    """Requests the engine holds but has not started (its own scheduler's queue)."""


GenerationEvent = Delta | Finish
"""What the servicer streams on."""

BackendEvent = PromptCounted | Delta | Finish
"""What a backend yields."""
