"""The model server's own types: what a backend receives and yields.

The servicer translates protobuf into these and back, so backends never see
protobuf and the contract can evolve without touching them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class FinishReason(enum.Enum):
    """Why a generation ended (mirrors switchyard.v1.FinishReason)."""

    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"
    ERROR = "error"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"


class Capability(enum.Enum):
    """What a model can do (mirrors switchyard.v1.Capability)."""

    COMPLETION = "completion"
    CHAT = "chat"
    STREAMING = "streaming"
    LOGPROBS = "logprobs"
    TOOLS = "tools"
    JSON_OUTPUT = "json_output"
    """response_format json_object and json_schema."""
    GRAMMAR_OUTPUT = "grammar_output"
    """response_format regex and grammar."""
    COUNT_TOKENS = "count_tokens"
    ADAPTERS = "adapters"
    STRICT_TOOLS = "strict_tools"
    """Tools marked strict: every call of one is held to its schema."""


class ModelState(enum.Enum):
    """A model's live state (mirrors switchyard.v1.ModelStatus, but for REMOVED)."""

    LOADING = "loading"
    READY = "ready"
    """Loaded: in memory and serving."""
    UNAVAILABLE = "unavailable"
    UNLOADED = "unloaded"
    """Not in memory; its next request loads it (backends whose models load on demand)."""
    DRAINING = "draining"
    """Its file was removed: requests in flight finish, new ones are refused."""
    REMOVED = "removed"
    """Gone: the catalog forgets it (never listed)."""


@dataclass(frozen=True)
class ToolCall:
    """A call of a tool by the model: arguments are JSON object text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatTurn:
    """One chat message: an assistant turn may carry tool calls, a "tool" turn
    answers one of them by id."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its checked JSON Schema.
    ``strict``: every call must name it and match ``parameters`` (a backend that
    cannot hold calls to that refuses the request, naming ``tools[i].strict``)."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}, hash=False
    )
    strict: bool = False


class ToolChoiceMode(enum.Enum):
    """Whether the model may, must or must not call tools (NAMED: one given tool)."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    NAMED = "named"


@dataclass(frozen=True)
class ToolChoice:
    """The request's tool choice; ``name`` is set for NAMED."""

    mode: ToolChoiceMode = ToolChoiceMode.AUTO
    name: str = ""


@dataclass(frozen=True)
class JsonObjectFormat:
    """Output: any JSON object."""


@dataclass(frozen=True)
class JsonSchemaFormat:
    """Output: JSON matching ``schema`` (checked to be a valid JSON Schema)."""

    schema: dict[str, Any] = field(hash=False)
    name: str = "response"


@dataclass(frozen=True)
class RegexFormat:
    """Output: text that the regular expression matches whole."""

    pattern: str


@dataclass(frozen=True)
class GrammarFormat:
    """Output: text that a GBNF grammar (start rule ``root``) accepts."""

    gbnf: str


ResponseFormat = JsonObjectFormat | JsonSchemaFormat | RegexFormat | GrammarFormat
"""What a request constrains its output to (None: plain text)."""


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
    adapter: str | None = None
    """The LoRA adapter to apply (None: the base model)."""
    deadline: float | None = None
    """When the caller stops waiting, on ``time.monotonic()``'s clock (None: no deadline)."""
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True
    """False: at most one tool call."""
    response_format: ResponseFormat | None = None
    chat_template: str | None = None
    """The model's configured chat-template override (Jinja), if any: backends that
    format chats themselves use it instead of the model's own template."""

    @property
    def calls_tools(self) -> bool:
        """Whether the model may call tools in this request."""
        return bool(self.tools) and self.tool_choice.mode is not ToolChoiceMode.NONE


@dataclass(frozen=True)
class ModelCard:
    """What ListModels reports about one model."""

    id: str
    context_length: int
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[Capability] = frozenset(
        {Capability.COMPLETION, Capability.CHAT, Capability.STREAMING}
    )
    memory_bytes: int = 0
    """What it takes in memory when loaded (0: unknown)."""


@dataclass(frozen=True)
class AdapterInfo:
    """A LoRA adapter a request may name, and whether it is in memory now."""

    name: str
    loaded: bool


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log probability and the likeliest alternatives
    (id, text, logprob). Ids are 0 where the backend does not know them (cloud APIs)."""

    id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: its first piece has ``id`` and ``name``, later ones
    (same ``index``) fragments of its arguments."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Delta:
    """New output: text plus how many tokens produced it (and their ids, if known).

    ``logprobs`` has one entry per token when the request asked for logprobs;
    ``tool_calls`` carries pieces of tool calls the tokens made.
    """

    text: str
    tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


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
