"""torch.compile of the decoder layers, with the masking as data inside them.

Each decoder layer's `forward` is compiled (regional compilation): all layers of a model share one
code object, so they share their graphs, and a graph is compiled with dynamic shapes, so batches of
other lengths and row counts reuse it. The head gates (attention_influence.masking) are buffers the
graph reads as inputs: closing or opening them between passes changes values, not code, so the masked
pass is masked and nothing recompiles. The fused pass's fan-out hooks run around the compiled forward,
in eager Python. Whether compiling pays is measured per device kind; the scorer's default is eager.
"""

from __future__ import annotations

import torch
from torch import nn

from attention_influence.masking import decoder_layers

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compile_layers(model: nn.Module, mode: str = "default") -> str | None:
    """Compile every decoder layer's forward in place; None when done, else why not (one line).

    `mode="reduce-overhead"` adds CUDA graphs, which need a CUDA device: on any other device the layers
    stay eager and the reason is returned, so a caller can report it and go on. Calling it again, or
    with another mode, keeps the first compilation."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(map(repr, COMPILE_MODES))}, got {mode!r}")
    device = next(model.parameters()).device
    if mode == "reduce-overhead" and device.type != "cuda":
        return f"mode 'reduce-overhead' (CUDA graphs) needs a CUDA device, not {device.type}; the layers stay eager"
    for layer in decoder_layers(model):
        if "forward" not in layer.__dict__:  # not compiled yet
            layer.forward = torch.compile(layer.forward, dynamic=True, mode=None if mode == "default" else mode)
    return None


def uncompile_layers(model: nn.Module) -> None:
    """Back to the layers' own (eager) forward."""
    for layer in decoder_layers(model):
        layer.__dict__.pop("forward", None)


def is_compiled(model: nn.Module) -> bool:
    return any("forward" in layer.__dict__ for layer in decoder_layers(model))
