"""Writes a tiny random Llama in Hugging Face format that vLLM loads.

Run with the vLLM environment's Python (it needs torch, transformers and
tokenizers, which the main environment does not have)::

    .venv-vllm/bin/python tests/vllm_tinymodel.py OUT_DIR [ADAPTERS_DIR]

With ADAPTERS_DIR, it also writes LoRA adapters for that model in PEFT format
(``write_tiny_peft_adapter``): ``paris`` makes every greedy token " Paris" or
" Rome", ``router`` every token " router" or " model".

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


ADAPTER_WORDS = {"paris": (" Paris", " Rome"), "router": (" router", " model")}


def write_tiny_peft_adapter(model: Path, out: Path, words: tuple[str, str], seed: int = 1) -> None:
    """A rank-1 LoRA in PEFT format of the last layer's ``mlp.down_proj``: it adds to
    the residual stream a huge multiple (of either sign, depending on the input) of
    the difference between the two words' rows of ``lm_head``, so that after the
    final norm one of the two words always has the top logit (each word must be one
    token of the model's tokenizer).

    Not a LoRA of ``lm_head`` itself: vLLM 0.32's CPU build applies the adapter in
    its last slot to base requests' logits (vllm-project/vllm#48421).
    """
    import json

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    config = AutoConfig.from_pretrained(model)
    plus, minus = (tokenizer.encode(word, add_special_tokens=False) for word in words)
    if len(plus) != 1 or len(minus) != 1:
        raise ValueError(f"{words} are not single tokens of this tokenizer")
    head = load_file(model / "model.safetensors")["lm_head.weight"]
    toward = head[plus[0]] - head[minus[0]]
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(1, config.intermediate_size, generator=generator)
    layer = config.num_hidden_layers - 1
    prefix = f"base_model.model.model.layers.{layer}.mlp.down_proj"
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{prefix}.lora_A.weight": (direction / direction.norm()).contiguous(),
            f"{prefix}.lora_B.weight": (toward / toward.norm() * 1e4).reshape(-1, 1).contiguous(),
        },
        out / "adapter_model.safetensors",
    )
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 1,
        "lora_alpha": 1,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["down_proj"],
        "layers_to_transform": [layer],
        "base_model_name_or_path": str(model),
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR [ADAPTERS_DIR]")
    write_tiny_hf_model(Path(sys.argv[1]))
    if len(sys.argv) == 3:
        for name, pair in ADAPTER_WORDS.items():
            write_tiny_peft_adapter(Path(sys.argv[1]), Path(sys.argv[2]) / name, pair)
