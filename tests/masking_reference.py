"""A test-owned eager attention in which masked heads get equal weights built directly from positions.

Independent of `attention_influence.masking` (which zeroes queries): here every
head's weights are computed from scratch (q.k * scaling, softcap, causal and
sliding-window visibility from token positions, softmax), and for a masked
head they are *replaced* by 1/t over the t tokens it sees (1/min(t, W) under a
window W). It runs one unpadded row at a time: visibility comes from positions,
not from the model's attention mask.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def layer_window(config, layer: int) -> int | None:
    """The sliding window of `layer` as the config declares it, None for global attention."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer] != "sliding_attention":
        return None
    return window


def visible(length: int, window: int | None) -> torch.Tensor:
    """(length, length) bool: query position i sees key position j."""
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    seen = j <= i
    if window is not None:
        seen &= (i - j) < window
    return seen


def uniform_weights(length: int, window: int | None) -> torch.Tensor:
    """Row i: 1/min(i+1, window) on each visible position, 0 elsewhere."""
    seen = visible(length, window).double()
    counts = torch.tensor([min(i + 1, window or i + 1) for i in range(length)], dtype=torch.float64)
    return (seen / counts[:, None]).float()


def _reference_attention(masked: dict[int, list[int]], config):
    def attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, softcap=None,
                  sliding_window=None, **_kwargs):
        batch, n_heads, length, head_dim = query.shape
        assert batch == 1, "the reference runs one unpadded row at a time"
        layer = module.layer_idx
        window = layer_window(config, layer)
        assert sliding_window == window, f"layer {layer}: model window {sliding_window}, config says {window}"
        groups = n_heads // key.shape[1]
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        scores = (query @ key.transpose(-1, -2)).float() * (scaling if scaling is not None else head_dim ** -0.5)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~visible(length, window), float("-inf"))
        weights = F.softmax(scores, dim=-1)
        for head in masked.get(layer, []):
            weights[:, head] = uniform_weights(length, window)
        weights = weights.to(value.dtype)
        return (weights @ value).transpose(1, 2), weights
    return attention


@contextmanager
def uniform_reference(model, heads):
    """Within the block, an *eager* model's attention is the reference above, `heads` masked."""
    assert model.config._attn_implementation == "eager", "the reference replaces the eager attention function"
    masked: dict[int, list[int]] = {}
    for layer, head in heads:
        masked.setdefault(layer, []).append(head)
    modules = {sys.modules[type(m).__module__] for m in model.modules()
               if hasattr(sys.modules[type(m).__module__], "eager_attention_forward") and hasattr(m, "layer_idx")}
    assert modules, "no eager attention function found"
    saved = {module: module.eager_attention_forward for module in modules}
    for module in modules:
        module.eager_attention_forward = _reference_attention(masked, model.config)
    try:
        yield
    finally:
        for module, function in saved.items():
            module.eager_attention_forward = function


@torch.no_grad()
def reference_uniform_losses(model, ids: list[int], heads) -> torch.Tensor:
    """Per-token losses of one window from model(...).logits under the reference attention."""
    with uniform_reference(model, heads):
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="none")
