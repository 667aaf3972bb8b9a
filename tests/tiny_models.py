"""Tiny random models of several families and a character tokenizer, for core tests."""

from __future__ import annotations

import torch
from transformers import (AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, GemmaConfig, LlamaConfig,
                          MistralConfig, Phi3Config, Qwen2Config)

VOCAB = 101

COMMON = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, max_position_embeddings=128)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=4),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=1, head_dim=12),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2, pad_token_id=0),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=4, n_positions=128,
                               bos_token_id=0, eos_token_id=0),
}


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
