"""Forward FLOPs per token of a Llama-shaped decoder: the prediction beside each measured ratio.

A multiply-add counts 2 FLOPs. Per decoder layer: the q, k, v, o projections
(k and v are narrower under grouped-query attention), the attention scores and
the weighted sum over `context` earlier tokens (QK^T and AV), and the gated MLP
(three hidden x ffn matrices). The LM head is hidden x vocab. Norms, rotary
embeddings, softmax and the cross-entropy are left out (linear in hidden or
vocab, small next to the matrix products).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, config) -> "Shape":
        """The shape of a transformers Llama-style config."""
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size, heads=config.num_attention_heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   ffn=config.intermediate_size, vocab=config.vocab_size)

    @classmethod
    def of_dict(cls, values: dict) -> "Shape":
        return cls(**{name: values[name] for name in cls.__dataclass_fields__})


# SmolLM2-135M (its config.json) and the paper's 1.3B selector (arXiv 2505.07293, Table 7). The paper's
# number of key/value heads is our assumption (4 groups of 5 query heads): not found in the sources we had.
SMOLLM2_135M = Shape(layers=30, hidden=576, heads=9, kv_heads=3, ffn=1536, vocab=49152)
PAPER_1_3B = Shape(layers=16, hidden=2560, heads=20, kv_heads=4, ffn=10240, vocab=155136)


def layer_flops(shape: Shape, context: float) -> float:
    """One decoder layer, one token that attends to `context` tokens."""
    q_and_o = 2 * (2 * shape.hidden * shape.heads * shape.head_dim)
    k_and_v = 2 * (2 * shape.hidden * shape.kv_heads * shape.head_dim)
    attention = 2 * (2 * context * shape.heads * shape.head_dim)
    mlp = 3 * (2 * shape.hidden * shape.ffn)
    return q_and_o + k_and_v + attention + mlp


def head_flops(shape: Shape) -> float:
    return 2 * shape.hidden * shape.vocab


def full_pass_flops(shape: Shape, context: float) -> float:
    """One ordinary forward pass per token: every layer and the LM head."""
    return shape.layers * layer_flops(shape, context) + head_flops(shape)


def fused_flops(shape: Shape, first_masked_layer: int, context: float) -> float:
    """Full pass + the masked copy from the first masked layer on (the layers below are shared)."""
    return full_pass_flops(shape, context) + (shape.layers - first_masked_layer) * layer_flops(shape, context) \
        + head_flops(shape)


def two_pass_flops(shape: Shape, context: float) -> float:
    return 2 * full_pass_flops(shape, context)


def predicted_fused_ratio(shape: Shape, first_masked_layer: int, context: float) -> float:
    """Two-pass FLOPs / fused FLOPs: the speed-up the fused pass can give when compute bound."""
    return two_pass_flops(shape, context) / fused_flops(shape, first_masked_layer, context)


def mean_context(lengths) -> float:
    """Mean number of tokens a token attends to (itself included) over windows of these lengths."""
    total = sum(lengths)
    return sum(n * (n + 1) / 2 for n in lengths) / total if total else 0.0


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),   # SXM / HBM3
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", 70.0),    # before "A10"
    ("A10", 125.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("RTX 4090", 165.0),
]


def peak_bf16_tflops(device_name: str) -> float | None:
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: useful FLOPs per second / the device's dense peak."""
    if not peak_tflops:
        return None
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12)


def gpu_hours(tokens: float, flops_per_token: float, peak_tflops: float, utilisation: float) -> float:
    """GPU-hours to score `tokens` at `utilisation` of `peak_tflops` (a projection, not a measurement)."""
    return tokens * flops_per_token / (peak_tflops * 1e12 * utilisation) / 3600
