"""Writes tiny random Llama models as GGUF files that llama.cpp loads.

Nothing can be downloaded at test time, so the tests make their own models:
random weights (the output is gibberish, but deterministic under greedy
decoding) and a SentencePiece-style vocabulary llama.cpp accepts, with byte
fallback tokens (so any text tokenizes) and a ChatML chat template.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EOS_ID = 2
# A template that refuses conversations it cannot format, as many real ones do.
STRICT_TEMPLATE = (
    "{% if messages[0]['role'] != 'user' %}"
    "{{ raise_exception('Conversations must start with a user message') }}"
    "{% endif %}" + CHATML_TEMPLATE
)
_WORDS = (
    "the", "capital", "of", "france", "is", "paris", "hello", "world", "model", "token",
    "switch", "yard", "router", "stream", "answer", "question", "and", "a", "to", "in",
)  # fmt: skip


@dataclass(frozen=True)
class TinyModelSpec:
    """The shape of a tiny model."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    context_length: int = 2048
    quantization: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32
    seed: int = 0
    chat_template: str = CHATML_TEMPLATE


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces: list[str] = ["▁"]
    pieces += [c for c in string.printable.strip() if c != " "]
    for word in _WORDS:
        for end in range(1, len(word) + 1):
            pieces.append("▁" + word[:end])
            if end > 1:
                pieces.append(word[:end])
    seen = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(gguf.TokenType.NORMAL)
    # Longer pieces score higher so the tokenizer prefers whole words.
    scores = [0.0] * 259 + [float(len(t)) for t in tokens[259:]]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(path: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Writes a random Llama of the given shape to ``path`` (a .gguf file)."""
    tokens, scores, types = _vocabulary()
    vocab = len(tokens)
    width, ff = spec.width, spec.width * 3
    head_dim = width // spec.heads
    rng = np.random.default_rng(spec.seed)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(path.stem)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(width)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(
        gguf.LlamaFileType.ALL_F32
        if spec.quantization == gguf.GGMLQuantizationType.F32
        else gguf.LlamaFileType.MOSTLY_Q8_0
        if spec.quantization == gguf.GGMLQuantizationType.Q8_0
        else gguf.LlamaFileType.MOSTLY_Q4_0
    )
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_chat_template(spec.chat_template)

    def tensor(
        name: str, shape: tuple[int, ...], *, norm: bool = False, zero_row: int | None = None
    ) -> None:
        if norm:
            writer.add_tensor(name, np.ones(shape, dtype=np.float32))
            return
        data = (rng.standard_normal(shape) * 0.5 / np.sqrt(shape[-1])).astype(np.float32)
        if zero_row is not None:
            data[zero_row] = 0.0
        if spec.quantization == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data)
        else:
            quantized = gguf.quants.quantize(data, spec.quantization)
            writer.add_tensor(name, quantized, raw_dtype=spec.quantization)

    # Embeddings stay f32 (llama.cpp reads rows of them directly); matrices may be quantized.
    writer.add_tensor("token_embd.weight", rng.standard_normal((vocab, width)).astype(np.float32))
    tensor("output_norm.weight", (width,), norm=True)
    # A zero output row gives </s> a logit of 0 while hundreds of random logits
    # compete above it: greedy decoding never ends early, so tests that need a
    # long generation (deadlines, cancellation, max_tokens) get one.
    tensor("output.weight", (vocab, width), zero_row=EOS_ID)
    for block in range(spec.layers):
        prefix = f"blk.{block}"
        tensor(f"{prefix}.attn_norm.weight", (width,), norm=True)
        tensor(f"{prefix}.attn_q.weight", (width, width))
        tensor(f"{prefix}.attn_k.weight", (width, width))
        tensor(f"{prefix}.attn_v.weight", (width, width))
        tensor(f"{prefix}.attn_output.weight", (width, width))
        tensor(f"{prefix}.ffn_norm.weight", (width,), norm=True)
        tensor(f"{prefix}.ffn_gate.weight", (ff, width))
        tensor(f"{prefix}.ffn_up.weight", (ff, width))
        tensor(f"{prefix}.ffn_down.weight", (width, ff))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
