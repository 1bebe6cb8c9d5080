"""Tiny random models for the tests and the benchmarks (here, not in tests/, so benchmarks/ can import them)."""

import torch


def random_llama(
    tokenizer, *, seed: int = 0, dtype=torch.float32, device="cpu", attn_implementation: str | None = None, **shape
):
    """A randomly initialized Llama sized to ``tokenizer`` (vocabulary and special tokens), seeded, built on
    ``device``: the models of the tests and benchmarks. ``shape`` holds LlamaConfig fields (hidden_size, ...); it may
    override the defaults sized to the tokenizer (``tie_word_embeddings=False`` for an 8B shape)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        **{
            "vocab_size": len(tokenizer),
            "tie_word_embeddings": True,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **shape,
        }
    )
    torch.manual_seed(seed)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
