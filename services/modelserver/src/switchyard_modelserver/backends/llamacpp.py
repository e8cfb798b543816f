"""The `llamacpp` backend: every GGUF file in a models directory, on the CPU.

One llama.cpp context per model, driven by one worker thread, so one
generation per model runs at a time and the rest wait in the model's bounded
queue. Generation is our own token loop over ``Llama.generate`` rather than
``create_completion``, because we need what that API does not give:
``max_tokens`` as a hard cap (llama-cpp-python lets multi-byte characters
overshoot it), a cancellation check before every token, exact token counts
and stop sequences that are never partly emitted.

A prompt reuses what the context already computed: the prefix it shares with
the live context, or with a state the model's prompt cache kept from an earlier
request (``prompt_cache``, up to ``prompt_cache_bytes``), whichever is longer; the
reused tokens are the usage's ``cached_prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import ctypes
import logging
import random
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from switchyard_common.status import FieldViolation, invalid_argument
from switchyard_modelserver.backends.base import Backend, BackendOptions, StateReporter
from switchyard_modelserver.bridge import EngineThreadBridge
from switchyard_modelserver.domain import (
    BackendEvent,
    Capability,
    Delta,
    EngineLoad,
    Finish,
    FinishReason,
    GenerationRequest,
    ModelCard,
    ModelState,
    PromptCounted,
)
from switchyard_modelserver.limits import tokenize_within_context
from switchyard_modelserver.stops import StopMatcher

if TYPE_CHECKING:
    from llama_cpp import Llama

    from switchyard_modelserver.backends.prompt_cache import PromptStateCache

log = logging.getLogger(__name__)

# llama.cpp's own sampling defaults, used where a request leaves a field unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


class LlamaCppModelOptions(BackendOptions):
    """Overrides for one GGUF file."""

    file: str = Field(description="file name inside models_dir")
    id: str | None = Field(default=None, description="model id (default: file name without .gguf)")
    aliases: list[str] = Field(default_factory=list)
    context_length: int | None = Field(default=None, ge=16)


class LlamaCppOptions(BackendOptions):
    """Options of the llamacpp backend."""

    models_dir: Path
    models: list[LlamaCppModelOptions] = Field(default_factory=list)
    context_length: int = Field(default=4096, ge=16, description="per model, capped by training")
    threads: int | None = Field(default=None, ge=1, description="CPU threads per model")
    batch_size: int = Field(default=512, ge=1)
    default_max_tokens: int = Field(default=512, ge=1)
    prompt_chunk_tokens: int = Field(
        default=128,
        ge=1,
        description="prompt tokens per forward pass; cancellation is "
        "checked between passes, so this bounds how long a cancelled prompt keeps the model",
    )
    prompt_cache_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=0,
        description="memory per model for prompt states beyond the live one, so that "
        "conversations that interleave each skip the prefix they already computed; 0: off",
    )


@dataclass
class _LoadedModel:
    card: ModelCard
    llama: Llama
    executor: concurrent.futures.ThreadPoolExecutor
    add_bos: bool
    chat_template: str | None
    prompt_cache: PromptStateCache | None
    generating: int = 0  # requests on its worker thread now (0 or 1)


@dataclass(frozen=True)
class _Job:
    prompt_chunk_tokens: int
    prompt_tokens: list[int]
    continuation_tokens: list[int]
    delivered_text: str
    include_token_ids: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    stop: tuple[str, ...]


class LlamaCppBackend(Backend):
    """Serves GGUF models with llama-cpp-python."""

    kind = "llamacpp"
    options_model = LlamaCppOptions

    def __init__(self, options: LlamaCppOptions) -> None:
        self._options = options
        self._files = self._discover(options)
        self._loaded: dict[str, _LoadedModel] = {}
        self._live: set[EngineThreadBridge] = set()

    @staticmethod
    def _discover(options: LlamaCppOptions) -> dict[str, tuple[Path, LlamaCppModelOptions]]:
        directory = options.models_dir
        if not directory.is_dir():
            raise ValueError(f"backend.models_dir: {directory} is not a directory")
        overrides = {m.file: m for m in options.models}
        files: dict[str, tuple[Path, LlamaCppModelOptions]] = {}
        for path in sorted(directory.glob("*.gguf")):
            override = overrides.pop(path.name, LlamaCppModelOptions(file=path.name))
            model_id = override.id or path.name.removesuffix(".gguf")
            if model_id in files:
                raise ValueError(
                    f"backend.models: {path.name} and {files[model_id][0].name} "
                    f"would both be model {model_id!r}"
                )
            files[model_id] = (path, override)
        if overrides:
            missing = ", ".join(sorted(overrides))
            raise ValueError(f"backend.models: no such file in {directory}: {missing}")
        if not files:
            raise ValueError(f"backend.models_dir: no .gguf files in {directory}")
        return files

    def models(self) -> list[ModelCard]:
        cards = []
        for model_id, (_, override) in self._files.items():
            loaded = self._loaded.get(model_id)
            cards.append(
                loaded.card
                if loaded
                else ModelCard(
                    id=model_id,
                    aliases=tuple(override.aliases),
                    context_length=override.context_length or self._options.context_length,
                )
            )
        return cards

    async def load(self, report: StateReporter) -> None:
        for card in self.models():
            path, override = self._files[card.id]
            try:
                loaded = await asyncio.to_thread(self._load_one, card.id, path, override)
            except Exception as error:  # a bad file must not take the other models down
                log.exception("model %s failed to load from %s", card.id, path)
                report(card, ModelState.UNAVAILABLE, f"failed to load: {error}")
                continue
            self._loaded[card.id] = loaded
            log.info(
                "model %s loaded from %s (context %d)",
                card.id,
                path.name,
                loaded.card.context_length,
            )
            report(loaded.card, ModelState.READY, "")

    def _load_one(self, model_id: str, path: Path, override: LlamaCppModelOptions) -> _LoadedModel:
        from llama_cpp import Llama

        wanted = override.context_length or self._options.context_length
        llama = Llama(
            model_path=str(path),
            n_ctx=wanted,
            n_batch=self._options.batch_size,
            n_threads=self._options.threads,
            n_threads_batch=self._options.threads,
            verbose=False,
        )
        trained = int(llama.metadata.get(f"{_architecture(llama)}.context_length", wanted))
        context_length = min(wanted, trained, llama.n_ctx())
        template = llama.metadata.get("tokenizer.chat_template")
        capabilities = {Capability.COMPLETION, Capability.STREAMING}
        if template:
            capabilities.add(Capability.CHAT)
        card = ModelCard(
            id=model_id,
            aliases=tuple(override.aliases),
            context_length=context_length,
            capabilities=frozenset(capabilities),
        )
        add_bos = llama.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llama-{model_id}")
        prompt_cache = None
        if self._options.prompt_cache_bytes:
            from switchyard_modelserver.backends.prompt_cache import PromptStateCache

            prompt_cache = PromptStateCache(self._options.prompt_cache_bytes)
        return _LoadedModel(card, llama, executor, add_bos, template, prompt_cache)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        model = self._loaded[request.model]
        sampling = request.sampling
        if sampling.logprobs is not None:
            raise invalid_argument(
                FieldViolation("sampling.logprobs", "not supported by the llamacpp backend")
            )
        if request.messages is not None and model.chat_template is None:
            raise invalid_argument(
                FieldViolation(
                    "messages", f"model {request.model} has no chat template; send a prompt"
                )
            )
        tokens = await tokenize_within_context(
            request,
            tokenize_prompt=lambda: asyncio.to_thread(self._prompt_tokens, model, request),
            tokenize_text=lambda text: asyncio.to_thread(_text_tokens, model.llama, text),
            vocabulary_size=model.llama.n_vocab(),
            context_length=model.card.context_length,
            default_max_tokens=self._options.default_max_tokens,
        )
        job = _Job(
            prompt_chunk_tokens=self._options.prompt_chunk_tokens,
            prompt_tokens=tokens.prompt_tokens,
            continuation_tokens=tokens.continuation_tokens,
            delivered_text=request.continuation.text,
            include_token_ids=request.include_token_ids,
            max_tokens=tokens.max_tokens,
            temperature=_or(sampling.temperature, DEFAULT_TEMPERATURE),
            top_p=_or(sampling.top_p, DEFAULT_TOP_P),
            top_k=_or(sampling.top_k, DEFAULT_TOP_K),
            # Without a seed every request samples differently, as users expect.
            seed=(sampling.seed if sampling.seed is not None else random.getrandbits(32))
            & 0xFFFFFFFF,
            presence_penalty=_or(sampling.presence_penalty, 0.0),
            frequency_penalty=_or(sampling.frequency_penalty, 0.0),
            repetition_penalty=_or(sampling.repetition_penalty, 1.0),
            stop=sampling.stop,
        )
        yield PromptCounted(len(tokens.prompt_tokens))
        bridge = EngineThreadBridge()
        self._live.add(bridge)
        model.generating += 1
        asyncio.get_running_loop().run_in_executor(
            model.executor, _decode, model.llama, model.prompt_cache, job, bridge
        )
        try:
            async for event in bridge.events():
                yield event
        finally:
            # Consumer gone (finished, cancelled or timed out): the worker stops
            # before its next token and the model is free for the next request.
            bridge.cancelled.set()
            self._live.discard(bridge)
            model.generating -= 1

    def engine_load(self) -> EngineLoad:
        """The context in use of the model generating now (llama.cpp's KV cache is
        its context: one sequence per model), 0 while none is."""
        usage = 0.0
        for model in self._loaded.values():
            if model.generating:
                usage = max(usage, model.llama.n_tokens / model.llama.n_ctx())
        return EngineLoad(kv_cache_usage=usage)

    @staticmethod
    def _prompt_tokens(model: _LoadedModel, request: GenerationRequest) -> list[int]:
        llama = model.llama
        if request.messages is None:
            assert request.prompt is not None
            return list(
                llama.tokenize(request.prompt.encode(), add_bos=model.add_bos, special=False)
            )
        import jinja2
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        assert model.chat_template is not None
        formatter = Jinja2ChatFormatter(
            template=model.chat_template,
            eos_token=_token_text(llama, llama.token_eos()),
            bos_token=_token_text(llama, llama.token_bos()),
        )
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = formatter(messages=messages).prompt
        except (ValueError, TypeError, jinja2.TemplateError) as error:
            # Templates reject what they cannot format (e.g. roles that do not alternate).
            raise invalid_argument(
                FieldViolation("messages", f"{request.model}'s chat template refused them: {error}")
            ) from None
        bos_text = _token_text(llama, llama.token_bos())
        add_bos = model.add_bos and not (bos_text and text.startswith(bos_text))
        return list(llama.tokenize(text.encode(), add_bos=add_bos, special=True))

    async def close(self) -> None:
        # Stop generations still running (the drain's grace period is over),
        # then wait for the workers off the event loop.
        for bridge in self._live:
            bridge.cancelled.set()
        for model in self._loaded.values():
            await asyncio.to_thread(model.executor.shutdown, wait=True, cancel_futures=True)
            model.llama.close()
        self._loaded.clear()


def _text_tokens(llama: Llama, text: str) -> list[int]:
    """Tokens of text the model produced (a continuation): no BOS, no special tokens."""
    return list(llama.tokenize(text.encode(), add_bos=False, special=False))


_T = TypeVar("_T")


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _architecture(llama: Llama) -> str:
    return str(llama.metadata.get("general.architecture", "llama"))


def _token_text(llama: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama._model.token_get_text(token)


def _decode(
    llama: Llama, cache: PromptStateCache | None, job: _Job, bridge: EngineThreadBridge
) -> None:
    """The token loop; runs on the model's worker thread. Afterwards (the answer
    is out) the context's state joins the prompt cache."""
    import llama_cpp

    try:
        _decode_tokens(llama, cache, job, bridge, llama_cpp.llama_vocab_is_eog)
        if cache is not None and llama.n_tokens >= _MIN_CACHED_TOKENS:
            _save_state(llama, cache)
    except BaseException as error:  # surfaced to the RPC by the bridge
        bridge.push(error)


_MIN_CACHED_TOKENS = 32  # shorter contexts are quicker to compute than to keep


def _save_state(llama: Llama, cache: PromptStateCache) -> None:
    """Keeps the context's state (its sequence's KV cells) in ``cache``."""
    import llama_cpp

    context = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(context, 0)
    if size > cache.capacity_bytes:
        return
    data = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(context, data, size, 0)
    cache.store(llama.input_ids[: llama.n_tokens].copy(), data, int(written))


def _restore_longest(llama: Llama, cache: PromptStateCache, tokens: list[int]) -> None:
    """Restores the kept state that shares the longest prefix with ``tokens``, if it
    shares more than the live context does."""
    import llama_cpp
    import numpy as np

    from switchyard_modelserver.backends.prompt_cache import common_prefix

    wanted = np.asarray(tokens, dtype=np.intc)
    found = cache.longest(wanted)
    if found is None:
        return
    shared, state = found
    if shared <= common_prefix(llama.input_ids[: llama.n_tokens], wanted):
        return
    context = llama._ctx.ctx
    if llama_cpp.llama_state_seq_set_data(context, state.data, state.size, 0) != state.size:
        log.warning("could not restore a cached prompt state; computing the prompt")
        llama.reset()  # type: ignore[no-untyped-call]
        return
    llama.n_tokens = len(state.tokens)
    llama.input_ids[: llama.n_tokens] = state.tokens


def _prefill(llama: Llama, tokens: list[int], chunk: int, cancelled: threading.Event) -> int | None:
    """Evaluates the prompt in chunks, reusing the prefix the context holds; returns
    how many prompt tokens it reused (None: cancelled).

    Chunks bound how long a cancelled request keeps the model busy (a long
    prompt in one pass would hold it for seconds). Afterwards the whole prompt
    is cached, so ``Llama.generate`` samples at once.
    """
    cached = 0
    for old, new in zip(llama._input_ids, tokens, strict=False):
        if old != new:
            break
        cached += 1
    cached = min(cached, len(tokens) - 1)  # the last token is evaluated for fresh logits
    llama.n_tokens = cached
    for start in range(cached, len(tokens), chunk):
        if cancelled.is_set():
            return None
        llama.eval(tokens[start : start + chunk])
    return cached


def _decode_tokens(
    llama: Llama,
    cache: PromptStateCache | None,
    job: _Job,
    bridge: EngineThreadBridge,
    is_eog: Any,
) -> None:
    cancelled: threading.Event = bridge.cancelled
    if cancelled.is_set():  # cancelled while waiting for the thread
        return
    llama.set_seed(job.seed)
    vocab = llama._model.vocab  # no public accessor for end-of-generation checks
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = StopMatcher(job.stop)
    history = list(job.prompt_tokens)
    generated = 0
    cached: int | None = 0

    def finish(reason: FinishReason, stop_sequence: str = "") -> None:
        bridge.push(
            Finish(
                reason=reason,
                prompt_tokens=len(job.prompt_tokens),
                completion_tokens=generated,
                stop_sequence=stop_sequence,
                cached_prompt_tokens=cached or 0,
            )
        )

    # A continuation is replayed through the same decoder and stop matcher as
    # if we had generated it, so a character or a stop sequence cut by the
    # interruption completes exactly as it would have.
    replayed = ""
    if job.continuation_tokens:
        # Evaluate as the interrupted server did: the prompt in the same passes,
        # then each generated token alone. One batched pass would compute
        # slightly different logits and change a greedy continuation at near-ties.
        llama.reset()  # type: ignore[no-untyped-call]
    elif cache is not None:
        _restore_longest(llama, cache, job.prompt_tokens)
    cached = _prefill(llama, job.prompt_tokens, job.prompt_chunk_tokens, cancelled)
    if cached is None:
        return
    for token in job.continuation_tokens:
        if cancelled.is_set():
            return
        llama.eval([token])
        replayed += utf8.decode(llama.detokenize([token], prev_tokens=history))
        history.append(token)
        generated += 1
    delivered = job.delivered_text
    undelivered = replayed[len(delivered) :] if replayed.startswith(delivered) else ""
    if undelivered:
        text, matched = stops.feed(undelivered)
        bridge.push(Delta(text, 0))
        if matched is not None:
            finish(FinishReason.STOP_SEQUENCE, matched)
            return
    if generated >= job.max_tokens:
        bridge.push(Delta(stops.flush(), 0))
        finish(FinishReason.LENGTH)
        return
    tokens = llama.generate(
        history,
        top_k=job.top_k,
        top_p=job.top_p,
        min_p=DEFAULT_MIN_P,
        temp=job.temperature,
        repeat_penalty=job.repetition_penalty,
        frequency_penalty=job.frequency_penalty,
        presence_penalty=job.presence_penalty,
        reset=True,
    )
    for token in tokens:
        if cancelled.is_set():
            return
        if is_eog(vocab, token):
            bridge.push(Delta(stops.flush(), 0))
            finish(FinishReason.STOP)
            return
        piece = llama.detokenize([token], prev_tokens=history)
        history.append(token)
        generated += 1
        text, matched = stops.feed(utf8.decode(piece))
        bridge.push(Delta(text, 1, [token] if job.include_token_ids else []))
        if matched is not None:
            finish(FinishReason.STOP_SEQUENCE, matched)
            return
        if generated >= job.max_tokens:
            # An incomplete UTF-8 character at the cap is dropped, not sent half.
            bridge.push(Delta(stops.flush(), 0))
            finish(FinishReason.LENGTH)
            return
