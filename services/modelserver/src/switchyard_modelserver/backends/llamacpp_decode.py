"""The token loop that runs on a llama.cpp model's worker thread: the prompt in
chunks (reusing the live context's prefix or a kept prompt state), a resumed
stream's tokens replayed, then sampling token by token with the stop matcher, the
cancellation check before each token and the ``max_tokens`` cap. Every event goes to
the request through the ``EngineThreadBridge``.

``llamacpp`` builds the ``DecodeJob`` on the event loop and hands ``decode`` to the
worker thread."""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from switchyard_modelserver.backends.llamacpp_grammar import Constraint
from switchyard_modelserver.backends.llamacpp_lora import AdapterSet, use_adapter
from switchyard_modelserver.backends.llamacpp_sampling import TokenSampler
from switchyard_modelserver.bridge import EngineThreadBridge
from switchyard_modelserver.domain import Delta, Finish, FinishReason
from switchyard_modelserver.stops import StopMatcher

if TYPE_CHECKING:
    from llama_cpp import Llama

    from switchyard_modelserver.backends.prompt_cache import PromptStateCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeJob:
    """One generation as the worker thread runs it: the prompt's tokens, what a resumed
    stream already delivered, sampling, stops, the grammar and the LoRA adapter."""

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
    constraint: Constraint | None = None
    adapter: str | None = None
    adapter_path: Path | None = None
    adapters: AdapterSet | None = None


def decode(
    llama: Llama, cache: PromptStateCache | None, job: DecodeJob, bridge: EngineThreadBridge
) -> None:
    """The token loop; runs on the model's worker thread. Afterwards (the answer
    is out) the context's state joins the prompt cache."""
    import llama_cpp

    try:
        _decode_tokens(llama, cache, job, bridge, llama_cpp.llama_vocab_is_eog)
        if cache is not None and llama.n_tokens >= _MIN_CACHED_TOKENS:
            _save_state(llama, cache, job.adapter)
    except BaseException as error:  # surfaced to the RPC by the bridge
        bridge.push(error)


_MIN_CACHED_TOKENS = 32  # shorter contexts are quicker to compute than to keep


def _save_state(llama: Llama, cache: PromptStateCache, adapter: str | None) -> None:
    """Keeps the context's state (its sequence's KV cells, computed under ``adapter``)
    in ``cache``."""
    import llama_cpp

    context = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(context, 0)
    if size > cache.capacity_bytes:
        return
    data = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(context, data, size, 0)
    cache.store(llama.input_ids[: llama.n_tokens].copy(), data, int(written), adapter)


def _restore_longest(
    llama: Llama, cache: PromptStateCache, tokens: list[int], adapter: str | None
) -> None:
    """Restores the kept state (computed under ``adapter``, the one the context
    applies now) that shares the longest prefix with ``tokens``, if it shares more
    than the live context does."""
    import llama_cpp
    import numpy as np

    from switchyard_modelserver.backends.prompt_cache import common_prefix

    wanted = np.asarray(tokens, dtype=np.intc)
    found = cache.longest(wanted, adapter)
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
    job: DecodeJob,
    bridge: EngineThreadBridge,
    is_eog: Any,
) -> None:
    cancelled: threading.Event = bridge.cancelled
    if cancelled.is_set():  # cancelled while waiting for the thread
        return
    if job.adapters is not None:
        use_adapter(llama, job.adapters, job.adapter, job.adapter_path)
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
        _restore_longest(llama, cache, job.prompt_tokens, job.adapter)
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
    sampler = TokenSampler(llama, job)
    try:
        for token in job.continuation_tokens:
            sampler.accept(token)
        while True:
            if cancelled.is_set():
                return
            token = sampler.sample()
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
            llama.eval([token])
    finally:
        sampler.close()
