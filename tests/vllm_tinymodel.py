"""Writes a tiny random Llama in Hugging Face format that vLLM loads.

Run with the vLLM environment's Python (it needs torch, transformers and
tokenizers, which the main environment does not have)::

    .venv-vllm/bin/python tests/vllm_tinymodel.py OUT_DIR

Nothing can be downloaded at test time, so the tokenizer is a byte-level BPE
trained here on a few sentences and the weights are random (the output is
gibberish, but deterministic under greedy decoding). The shape is vLLM's
smallest comfortable one: hidden size 128 with 4 heads gives head_dim 32, which
the CPU attention kernels support. The end-of-sequence token's output row is
zeroed, so the model practically never ends by itself: a long generation runs
until max_tokens, and a test can cancel it midway.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Hello world, this is a tiny model that answers questions about the switchyard router.",
    "Once upon a time a stream of tokens went through a model server and a router.",
    "Which city is the capital of France? Paris is the answer to that question.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>-_=+*/\\",
]


def write_tiny_hf_model(out: Path, *, seed: int = 0, context_length: int = 4096) -> None:
    """Trains the tokenizer, builds the random model and saves both into ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        model_max_length=context_length,
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:  # larger than the default init: livelier gibberish
                parameter.normal_(0.0, 0.3)
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    write_tiny_hf_model(Path(sys.argv[1]))
