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

Both are data, not hooks: a gate over the heads (a buffer, ones but zero for masked heads) that the
query source multiplies its output by, or the output projection its input by, installed once per
model; any attention implementation, eager or compiled, is masked the same way.
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


# Masking is data. Each gated module holds two buffers: `head_gate` (width,), one but zero over its
# layer's masked heads' slices, and `head_gate_rows` (capacity, 1, 1), one for each batch row the gate
# applies to, zero for a row it does not (the fused pass's full rows). The module multiplies by
# 1 - rows * (1 - gate): exactly x where the gate is open (all ones, the state outside a pass), exactly 0
# on a masked head's slice in a masked row. The gates are installed once per module (its class is swapped
# for a subclass with that multiply, so parameter names and state_dict stay as they were); a pass only
# changes their values, in place, with `copy_`. Their shapes never change with the batch (the rows
# buffer is sliced to the batch's rows inside the forward), so a compiled layer reads them as inputs:
# changing the masking neither recompiles nor goes unseen, as forward hooks did (dynamo does not guard
# on hooks) -- and compiled graphs specialise on the shapes of buffers, which is why they stay fixed.
GATE, ROWS = "head_gate", "head_gate_rows"
_GATED_CLASSES: dict[tuple[type, str], type] = {}


def _scale(module: nn.Module, rows: int, dtype: torch.dtype) -> torch.Tensor:
    gate, applies = getattr(module, GATE), getattr(module, ROWS)
    # More rows than the buffer holds only when every row is masked or the gate is open (`close` grows the
    # buffer for a row subset): its first entry then stands for all of them.
    applies = applies[:1].expand(rows, 1, 1) if rows > applies.shape[0] else applies[:rows]
    return (1 - applies * (1 - gate)).to(dtype)  # (rows, 1, width)


def _gated_class(base: type, side: str) -> type:
    """`base` with its output (`side="output"`, the queries) or its first input (`"input"`, the heads'
    outputs entering the output projection) multiplied by the module's gate."""
    key = (base, side)
    if key not in _GATED_CLASSES:
        if side == "output":
            def forward(self, *args, **kwargs):
                out = base.forward(self, *args, **kwargs)
                return out * _scale(self, out.shape[0], out.dtype)
        else:
            def forward(self, hidden, *args, **kwargs):
                return base.forward(self, hidden * _scale(self, hidden.shape[0], hidden.dtype), *args, **kwargs)
        name = f"HeadGated{side.capitalize()}{base.__name__}"
        while name in globals():  # another base class of the same name
            name += "_"
        gated = type(name, (base,), {"forward": forward, "__module__": __name__, "__qualname__": name,
                                     "gated_side": side})
        globals()[name] = _GATED_CLASSES[key] = gated  # findable by name, so a gated model pickles
    return _GATED_CLASSES[key]


def _gate_width(module: nn.Module) -> int:
    """Width of the last dimension the gate multiplies: the queries a module produces."""
    for name in ("out_features", "nf"):  # nn.Linear, GPT-2's Conv1D
        if isinstance(getattr(module, name, None), int):
            return getattr(module, name)
    return module.weight.shape[0]  # a norm over all heads (OLMo2's q_norm)


def _normal_ones(*shape, like: torch.Tensor | None) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor, so passes in and out of inference mode may set it
        return torch.ones(*shape, dtype=like.dtype if like is not None else torch.float32,
                          device=like.device if like is not None else None)


def _gated(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if hasattr(type(module), "gated_side")]


def _grow_rows(model: nn.Module, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A rows buffer at least `rows` long (doubling), given to every gate of the model; a compiled
    layer recompiles once per growth, which `HeadGates(max_rows=...)` avoids."""
    new = _normal_ones(max(64, rows, 2 * like.shape[0]), 1, 1, like=like)
    for module in _gated(model):
        module.register_buffer(ROWS, new, persistent=False)
    return new


def _install_gate(module: nn.Module, side: str, width: int, rows: torch.Tensor) -> nn.Module:
    if getattr(type(module), "gated_side", None) == side:
        return module
    if hasattr(type(module), "gated_side"):
        raise UnsupportedArchitectureError(f"{type(module).__name__} is gated on its {type(module).gated_side} "
                                           f"already; one module cannot hold both masking modes")
    module.__class__ = _gated_class(type(module), side)
    module.register_buffer(GATE, _normal_ones(width, like=next(module.parameters(), None)), persistent=False)
    module.register_buffer(ROWS, rows, persistent=False)  # one tensor shared by all the model's gates
    return module


def gated_modules(model: nn.Module, mode: str) -> list[nn.Module]:
    """The module of each layer that holds `mode`'s gate, installed on first use (once per model and mode).

    `uniform`: the queries' source (QUERY_SOURCES), its output gated; `zero-output`: the output projection,
    its input gated. Installing changes no result: an open gate multiplies by one."""
    check_masking(mode)
    gated = _gated(model)
    rows = getattr(gated[0], ROWS) if gated else _normal_ones(64, 1, 1, like=next(model.parameters(), None))
    if mode == "zero-output":
        _, n_heads, head_dim = head_layout(model)
        return [_install_gate(proj, "input", n_heads * head_dim, rows) for proj in output_projections(model)]
    source, _ = QUERY_SOURCES[model.config.model_type]
    return [_install_gate(attn.get_submodule(source), "output", _gate_width(attn.get_submodule(source)), rows)
            for attn in attention_modules(model)]


class HeadGates:
    """The gates of one model for one masking mode and one checked list of heads.

    Built once (the scorer builds it with itself); `closed(masked_rows)` sets the masked layers' gates
    for one pass and opens them again after it. `masked_rows` (bool, one per batch row) limits masking to
    those rows, so one batch can hold full and masked copies of the same windows (the fused pass).
    `max_rows`: the most rows a pass will have (the scorer's budget), so the rows buffer never grows.
    """

    def __init__(self, model: nn.Module, heads: list[Head], mode: str, max_rows: int = 0):
        self.model, self.mode = model, mode
        modules = gated_modules(model, mode)
        if getattr(modules[0], ROWS).shape[0] < max_rows:
            _grow_rows(model, max_rows, getattr(modules[0], ROWS))
        _, _, head_dim = head_layout(model)
        layout = "heads" if mode == "zero-output" else QUERY_SOURCES[model.config.model_type][1]
        by_layer: dict[int, list[int]] = {}
        for layer, head in heads:
            by_layer.setdefault(layer, []).append(head)
        # (module, its keep vector) for each masked layer; the other layers' gates stay open
        self.masked = [(modules[layer], _head_scale(getattr(modules[layer], GATE).shape[-1], head_dim, ids, layout))
                       for layer, ids in sorted(by_layer.items())]

    def close(self, masked_rows: torch.Tensor | None = None) -> None:
        """Mask the heads: in every row, or in the rows where `masked_rows` is true."""
        for module, keep in self.masked:  # each its own rows buffer: `model.to()` unshares them
            applies = getattr(module, ROWS)
            if masked_rows is None:
                applies.fill_(1)
            else:
                if applies.shape[0] < len(masked_rows):
                    applies = _grow_rows(self.model, len(masked_rows), applies)
                applies[:len(masked_rows)].copy_(masked_rows.view(-1, 1, 1))
            getattr(module, GATE).copy_(keep)

    def open(self) -> None:
        """Every gate back to one: the model as loaded."""
        for module, _ in self.masked:
            getattr(module, GATE).fill_(1)

    @contextmanager
    def closed(self, masked_rows: torch.Tensor | None = None) -> Iterator[None]:
        self.close(masked_rows)
        try:
            yield
        finally:
            self.open()


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
    """`mask_heads` without its checks, for a caller that made them once: `heads` as `checked_heads`
    returns them for this model and `mode`. A caller that masks many batches builds `HeadGates` once."""
    with HeadGates(model, heads, mode, len(masked_rows) if masked_rows is not None else 0).closed(masked_rows):
        yield
