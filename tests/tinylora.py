"""Writes a tiny GGUF LoRA adapter for the tiny models of ``tinymodel`` that llama.cpp loads.

The adapter's low-rank update of the output layer (``output.weight``) adds a
huge logit to one word and takes it from another, in proportion to one
direction of the final hidden state. Whatever that state is, one of the two
words wins: with the adapter a greedy generation is made of those two words
only (" paris" and " france" by default); without it, the random model
produces its usual gibberish. It also changes every layer's attention values
(``attn_v``), so the KV cache computed under it differs from the base model's:
a server that reused one for the other would answer differently.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from tinymodel import TinyModelSpec, _vocabulary

WORDS = ("paris", "france")
_STRENGTH = 1e4  # far above the random logits (about ±2)


def write_tiny_lora(
    path: Path,
    spec: TinyModelSpec | None = None,
    words: tuple[str, str] = WORDS,
    seed: int = 1,
) -> Path:
    """Writes the adapter (a rank-1 LoRA of ``output.weight``) to ``path``."""
    tokens, _, _ = _vocabulary()
    plus, minus = (tokens.index("▁" + word) for word in words)
    rng = np.random.default_rng(seed)
    width = (spec or TinyModelSpec()).width
    direction = rng.standard_normal((1, width)).astype(np.float32)
    direction /= np.linalg.norm(direction)
    up = np.zeros((len(tokens), 1), dtype=np.float32)
    up[plus, 0], up[minus, 0] = _STRENGTH, -_STRENGTH

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 1.0)  # rank 1: scale alpha / rank = 1
    writer.add_tensor("output.weight.lora_a", direction)
    writer.add_tensor("output.weight.lora_b", up)
    for block in range(spec.layers if spec else TinyModelSpec().layers):
        rank = 2
        down = (rng.standard_normal((rank, width)) / np.sqrt(width)).astype(np.float32)
        back = rng.standard_normal((width, rank)).astype(np.float32)
        writer.add_tensor(f"blk.{block}.attn_v.weight.lora_a", down)
        writer.add_tensor(f"blk.{block}.attn_v.weight.lora_b", back)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def only_words(text: str, words: tuple[str, ...] = WORDS) -> bool:
    """Whether ``text`` is made of the adapter's words only (each after a space)."""
    pieces = text.split(" ")
    return pieces[0] == "" and len(pieces) > 1 and all(p in words for p in pieces[1:])
