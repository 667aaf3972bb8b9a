"""Zero chosen attention heads of a Hugging Face causal LM.

A head's contribution to the residual stream is its slice of the input of the
attention output projection (`o_proj`, `dense`, `c_proj`): zeroing that slice
removes the head and nothing else. We do it with a forward pre-hook, so any
attention implementation (eager, SDPA, flash) is masked the same way. With
grouped-query attention the slice is per *query* head, which is what the
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


class UnsupportedArchitectureError(ValueError):
    pass


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


@contextmanager
def mask_heads(model: nn.Module, heads: Sequence[Head], masked_rows: torch.Tensor | None = None,
               mode: str = "zero-output") -> Iterator[None]:
    """Within the block, the chosen heads output zero.

    `masked_rows` (bool, one per batch row) limits masking to those rows, so a
    batch can hold full and masked copies of the same windows (the fused pass).
    """
    if mode != "zero-output":  # TEMPORARY: uniform masking lands with the masking work (issue 7)
        raise NotImplementedError(f"masking mode {mode!r} is not implemented yet")
    heads = validate_heads(model, heads)
    _, n_heads, head_dim = head_layout(model)
    projections = output_projections(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make_hook(head_ids: list[int]):
        keep = torch.ones(n_heads, head_dim)
        keep[head_ids] = 0
        keep = keep.flatten()

        def hook(_module, args):
            hidden = args[0]
            scale = keep.to(device=hidden.device, dtype=hidden.dtype)
            if masked_rows is None:
                return (hidden * scale,) + tuple(args[1:])
            rows = masked_rows.to(hidden.device).view(-1, *([1] * (hidden.dim() - 1)))
            return (torch.where(rows, hidden * scale, hidden),) + tuple(args[1:])
        return hook

    handles = [projections[layer].register_forward_pre_hook(make_hook(ids)) for layer, ids in by_layer.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
