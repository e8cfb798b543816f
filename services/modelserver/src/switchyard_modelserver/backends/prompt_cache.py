"""Prompt states kept beyond the last one, so a returning conversation skips its prefix.

A llama.cpp context holds one prompt's state (its KV cache) at a time: the next
request reuses what it shares with that one and computes the rest. When
conversations interleave on one replica, each would recompute its whole prompt.
This cache keeps the states of earlier prompts (the token ids they cover, and the
KV cells of the context's sequence), least recently used first out, within
``capacity_bytes``. Before a prompt is evaluated, the state that shares the longest
prefix with it is restored if it shares more than the live context does.

One state per conversation is enough: a state whose tokens start another's is
superseded by it (the longer one serves every prompt the shorter one would), so
it is dropped when the longer one is stored. A state computed under a LoRA
adapter serves only prompts under the same adapter (``llamacpp_lora``): each
state records its adapter, and a lookup sees only its own.

Why not llama-cpp-python's ``LlamaRAMCache``: its states carry a copy of the
context's logits (up to ``n_batch`` rows of the vocabulary: about 100 MB for
SmolLM2's 49k tokens) that its byte bound does not count; the states here are
the sequence's KV cells alone (``llama_state_seq_get_data``), which is what a
prompt needs, and they are counted whole.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.intc]


@dataclass(frozen=True)
class PromptState:
    """A saved context: the tokens it covers and its KV cells (an opaque buffer)."""

    tokens: Tokens
    data: Any
    """What ``llama_state_seq_get_data`` wrote (a ctypes array)."""
    size: int
    adapter: str | None = None
    """The LoRA adapter the context applied (None: the base model)."""


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    length = min(len(a), len(b))
    if not length:
        return 0
    differ = np.flatnonzero(a[:length] != b[:length])
    return int(differ[0]) if len(differ) else length


class PromptStateCache:
    """Prompt states of one model's context, within ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.size = 0
        self._states: OrderedDict[int, PromptState] = OrderedDict()
        self._next = 0
        self._lock = threading.Lock()  # the worker thread stores; metrics may read

    def __len__(self) -> int:
        return len(self._states)

    def longest(self, tokens: Tokens, adapter: str | None = None) -> tuple[int, PromptState] | None:
        """The state (under ``adapter``) sharing the longest prefix with ``tokens``,
        and that length (None: none shares any); it becomes the most recently used."""
        best: tuple[int, int, PromptState] | None = None
        with self._lock:
            for key, state in self._states.items():
                if state.adapter != adapter:
                    continue
                shared = common_prefix(state.tokens, tokens)
                if shared and (best is None or shared > best[0]):
                    best = (shared, key, state)
            if best is None:
                return None
            self._states.move_to_end(best[1])
        return best[0], best[2]

    def store(
        self, tokens: Sequence[int] | Tokens, data: Any, size: int, adapter: str | None = None
    ) -> bool:
        """Keeps a state computed under ``adapter`` (False: it alone exceeds the
        capacity, or a state already kept covers ``tokens`` and more). States it
        supersedes leave, and the least recently used ones while over capacity."""
        if size > self.capacity_bytes:
            return False
        covered = np.asarray(tokens, dtype=np.intc)
        with self._lock:
            for key, state in list(self._states.items()):
                if state.adapter != adapter:
                    continue
                shared = common_prefix(state.tokens, covered)
                if shared == len(covered):  # a kept state covers these tokens
                    self._states.move_to_end(key)
                    return False
                if shared == len(state.tokens):  # superseded by the new one
                    self._drop(key)
            self._states[self._next] = PromptState(covered, data, size, adapter)
            self._next += 1
            self.size += size
            while self.size > self.capacity_bytes:
                self._drop(next(iter(self._states)))
        return True

    def _drop(self, key: int) -> None:
        self.size -= self._states.pop(key).size
