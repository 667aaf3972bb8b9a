"""Tiny random models of several families and a character tokenizer, for core tests."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
                          GPTNeoXConfig, LlamaConfig, MistralConfig, Olmo2Config, OlmoConfig, Phi3Config, Qwen2Config,
                          Qwen3Config)

VOCAB = 101
SLIDING_WINDOW = 8  # shorter than the test documents, so windows really cut attention

COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, max_position_embeddings=128)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=4, sliding_window=SLIDING_WINDOW),
    "qwen3": lambda: Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=12),
    # Gemma 2/3 alternate sliding-window and global layers; Gemma 2 softcaps the attention scores.
    "gemma2": lambda: Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=12,
                                   sliding_window=SLIDING_WINDOW),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=12,
                                            sliding_window=SLIDING_WINDOW,
                                            layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "olmo": lambda: OlmoConfig(**COMMON, num_key_value_heads=4, clip_qkv=8.0, pad_token_id=0, eos_token_id=2),
    "olmo2": lambda: Olmo2Config(**COMMON, num_key_value_heads=2, pad_token_id=0),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=12),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=0, eos_token_id=2),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=128,
                               bos_token_id=0, eos_token_id=0),
}


# Families whose transformers implementation has no SDPA path (Gemma 2: SDPA cannot softcap).
NO_SDPA = {"gemma2"}


def attention_implementations(family: str) -> list[str]:
    return ["eager"] if family in NO_SDPA else ["eager", "sdpa"]


def tiny_model(family: str, attn_implementation: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[family]()
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    return model.eval()


class CharTokenizer:
    """BOS + one id per character: deterministic, no files, independent of the code under test."""

    pad_token_id = 0
    bos_token_id = 1

    def __call__(self, text: str):
        return {"input_ids": [self.bos_token_id] + [2 + ord(c) % (VOCAB - 2) for c in text]}
