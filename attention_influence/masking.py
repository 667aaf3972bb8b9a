"""Mask chosen attention heads of a Hugging Face causal LM, in one of two ways.

* `uniform` (the paper, Appendix C; the default): the head's attention weights
  become equal over the tokens it can see, 1/t at position t (1/min(t, W) under
  a sliding window W). The head is not removed: it contributes the mean of its
  value vectors. We zero the head's query after the projection, its bias and any
  normalisation across heads: every score of that head is then 0 (RoPE rotates a
  zero vector to zero, softcapping keeps tanh(0) = 0), so softmax is uniform
  over exactly the positions the causal or sliding-window mask allows, in eager,
  SDPA and flash attention alike.
* `zero-output`: the head's slice of the input of the attention output
  projection (`o_proj`, `dense`, `c_proj`) is zeroed, which removes the head.

Both are forward hooks, so any attention implementation is masked the same way.
With grouped-query attention a head is a *query* head, which is what the
retrieval score ranks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

# model_type -> (path of the decoder-layer list inside `model.base_model`,
#                path of the attention module inside a layer,
#                name of the output projection inside the attention module)
FAMILIES: dict[str, tuple[str, str, str]] = {
    "llama": ("layers", "self_attn", "o_proj"),
    "mistral": ("layers", "self_attn", "o_proj"),
    "qwen2": ("layers", "self_attn", "o_proj"),
    "qwen3": ("layers", "self_attn", "o_proj"),
    "gemma": ("layers", "self_attn", "o_proj"),
    "gemma2": ("layers", "self_attn", "o_proj"),
    "gemma3_text": ("layers", "self_attn", "o_proj"),
    "phi3": ("layers", "self_attn", "o_proj"),
    "olmo": ("layers", "self_attn", "o_proj"),
    "olmo2": ("layers", "self_attn", "o_proj"),
    "gpt_neox": ("layers", "attention", "dense"),
    "gpt2": ("h", "attn", "c_proj"),
}

Head = tuple[int, int]

# How a selected head is masked (SPEC §3): "uniform" (the paper: equal attention weights over the
# tokens the head can see) or "zero-output" (the head's output is zeroed before the output projection).
MASKING_MODES = ("uniform", "zero-output")
DEFAULT_MASKING = "uniform"

# model_type -> (module inside the attention module whose output holds the queries, layout of that output).
# The module is the last one before the queries reach RoPE and the scores: after the bias, after a norm
# over all heads (OLMo2's q_norm). A per-head norm (Qwen3, Gemma3 q_norm) maps a zero head to zero, so
# there the projection itself is the place. Layouts of the last dimension:
#   "heads": [head 0 | head 1 | ...] each head_dim wide, possibly followed by keys and values
#            (Phi-3 qkv_proj and GPT-2 c_attn put all queries first);
#   "per-head qkv": [q0 k0 v0 | q1 k1 v1 | ...] (GPT-NeoX query_key_value).
QUERY_SOURCES: dict[str, tuple[str, str]] = {
    "llama": ("q_proj", "heads"),
    "mistral": ("q_proj", "heads"),
    "qwen2": ("q_proj", "heads"),
    "qwen3": ("q_proj", "heads"),
    "gemma": ("q_proj", "heads"),
    "gemma2": ("q_proj", "heads"),
    "gemma3_text": ("q_proj", "heads"),
    "phi3": ("qkv_proj", "heads"),
    "olmo": ("q_proj", "heads"),
    "olmo2": ("q_norm", "heads"),
    "gpt_neox": ("query_key_value", "per-head qkv"),
    "gpt2": ("c_attn", "heads"),
}

# Attention that adds a position bias to the scores (ALiBi: BLOOM, MPT, Falcon with `alibi`) keeps the
# bias when the query is zero, so the weights are not equal: uniform masking refuses it by name.
ALIBI_FAMILIES = ("bloom", "mpt")
ALIBI_REASON = "ALiBi adds a distance bias to every score, so a zero query does not give equal weights"


class UnsupportedArchitectureError(ValueError):
    pass


def check_masking(mode: str, name: str = "mode") -> str:
    """`mode` if it is a masking mode; the error names the caller's parameter."""
    if mode not in MASKING_MODES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MASKING_MODES))}, got {mode!r}")
    return mode


def check_masking_supported(model: nn.Module, mode: str) -> None:
    """Refuse, with a one-line reason, a model that cannot be masked in `mode`."""
    model_type = getattr(model.config, "model_type", None)
    if mode == "uniform" and (model_type in ALIBI_FAMILIES or getattr(model.config, "alibi", False)):
        raise UnsupportedArchitectureError(
            f"uniform masking does not support architecture '{model_type}': {ALIBI_REASON}")
    _family(model)
    if mode == "uniform" and model_type not in QUERY_SOURCES:
        raise UnsupportedArchitectureError(f"uniform masking does not know where '{model_type}' computes its queries")


def _family(model: nn.Module) -> tuple[str, str, str]:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedArchitectureError(
            f"head masking does not support architecture '{model_type}' "
            f"({type(model).__name__}); supported: {supported}"
        )
    return FAMILIES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    layers_path, _, _ = _family(model)
    return model.base_model.get_submodule(layers_path)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    _, attn_path, _ = _family(model)
    return [layer.get_submodule(attn_path) for layer in decoder_layers(model)]


def output_projections(model: nn.Module) -> list[nn.Module]:
    _, _, proj_name = _family(model)
    return [getattr(attn, proj_name) for attn in attention_modules(model)]


def head_layout(model: nn.Module) -> tuple[int, int, int]:
    """(layers, query heads per layer, head dim) as the output projection sees them."""
    config = model.config
    n_layers = len(decoder_layers(model))
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    proj = output_projections(model)[0]
    in_features = proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]  # GPT-2 Conv1D
    if in_features % n_heads:
        raise UnsupportedArchitectureError(f"output projection width {in_features} is not a multiple of {n_heads} heads")
    return n_layers, n_heads, in_features // n_heads


def validate_heads(model: nn.Module, heads: Sequence[Head]) -> list[Head]:
    n_layers, n_heads, _ = head_layout(model)
    bad = [(l, h) for l, h in heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(f"heads out of range for a model with {n_layers} layers x {n_heads} heads: {bad[:5]}")
    return sorted(set((int(l), int(h)) for l, h in heads))


def checked_heads(model: nn.Module, heads: Sequence[Head], mode: str, name: str = "mode") -> list[Head]:
    """The core's one check of a masking request: `mode` (the error names the caller's parameter
    `name`), that the model can be masked that way, and `heads` in range; `validate_heads`' list."""
    check_masking(mode, name)
    check_masking_supported(model, mode)
    return validate_heads(model, heads)


def _head_scale(width: int, head_dim: int, head_ids: list[int], layout: str) -> torch.Tensor:
    """1 everywhere but 0 over the chosen heads' slices of a last dimension `width` wide."""
    keep = torch.ones(width)
    for head in head_ids:
        start = head * (3 * head_dim if layout == "per-head qkv" else head_dim)
        keep[start:start + head_dim] = 0
    return keep


@contextmanager
def mask_heads(model: nn.Module, heads: Sequence[Head], masked_rows: torch.Tensor | None = None,
               mode: str = DEFAULT_MASKING) -> Iterator[None]:
    """Within the block, the chosen heads are masked (`uniform` or `zero-output`, module docstring).

    `masked_rows` (bool, one per batch row) limits masking to those rows, so a
    batch can hold full and masked copies of the same windows (the fused pass).
    The entry for callers: `mode`, the model and `heads` are checked here.
    """
    with mask_checked_heads(model, checked_heads(model, heads, mode), masked_rows, mode):
        yield


@contextmanager
def mask_checked_heads(model: nn.Module, heads: list[Head], masked_rows: torch.Tensor | None = None,
                       mode: str = DEFAULT_MASKING) -> Iterator[None]:
    """`mask_heads` without its checks, for a caller that made them once (the scorer masks every batch):
    `heads` as `checked_heads` returns them for this model and `mode`."""
    _, n_heads, head_dim = head_layout(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def masked(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        scale = keep.to(device=hidden.device, dtype=hidden.dtype)
        if masked_rows is None:
            return hidden * scale
        rows = masked_rows.to(hidden.device).view(-1, *([1] * (hidden.dim() - 1)))
        return torch.where(rows, hidden * scale, hidden)

    def zero_output_hook(head_ids: list[int]):
        keep = _head_scale(n_heads * head_dim, head_dim, head_ids, "heads")

        def hook(_module, args):
            return (masked(args[0], keep),) + tuple(args[1:])
        return hook

    def zero_query_hook(head_ids: list[int], layout: str):
        keeps: dict[int, torch.Tensor] = {}  # by output width

        def hook(_module, _args, output):
            width = output.shape[-1]
            if width not in keeps:
                keeps[width] = _head_scale(width, head_dim, head_ids, layout)
            return masked(output, keeps[width])
        return hook

    if mode == "zero-output":
        projections = output_projections(model)
        handles = [projections[layer].register_forward_pre_hook(zero_output_hook(ids))
                   for layer, ids in by_layer.items()]
    else:
        source, layout = QUERY_SOURCES[model.config.model_type]
        attentions = attention_modules(model)
        handles = [attentions[layer].get_submodule(source).register_forward_hook(zero_query_hook(ids, layout))
                   for layer, ids in by_layer.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
