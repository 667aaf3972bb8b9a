"""The fused pass: the layers below the first masked layer run once on a batch of B rows, then full
and masked copies of it continue side by side (2B rows), the masked layers' gates closed over the
second half only. Gives the same losses as running the model twice (`losses.batch_losses`)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from attention_influence.masking import Head, HeadGates, decoder_layers


class _FanOut:
    """Forward pre-hooks that turn a batch of B rows into [full; masked] 2B rows at layer `start`
    while `start` is set (the fused pass), and pass everything through otherwise.

    Installed once per model (`fan_out`), never per batch. Every decoder layer from `start` on
    receives per-row tensors (position embeddings, masks) computed for B rows; those are tiled to
    2B. Only tensors of 2+ dimensions whose first dimension is B are tiled, which is what per-row
    inputs look like in every supported family. The hooks run outside the layers' forward, so a
    compiled layer sees plain tensors of B or 2B rows.
    """

    def __init__(self, model):
        self.start: int | None = None
        self.rows = 0
        for index, layer in enumerate(decoder_layers(model)):
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def _tile(self, value):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == self.rows:
            return torch.cat([value, value], dim=0)
        if isinstance(value, tuple):
            return tuple(self._tile(v) for v in value)
        return value

    def _hook(self, index: int):
        def hook(_module, args, kwargs):
            if self.start is None or index < self.start:
                return None
            if index == self.start:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.rows = hidden.shape[0]
            args = tuple(self._tile(a) for a in args)
            kwargs = {k: self._tile(v) for k, v in kwargs.items()}
            return args, kwargs
        return hook

    @contextmanager
    def from_layer(self, start: int):
        self.start = start
        try:
            yield
        finally:
            self.start = None


FAN_OUT = "_attention_influence_fan_out"


def fan_out(model) -> _FanOut:
    """The model's `_FanOut`, installed on first use."""
    if not isinstance(getattr(model, FAN_OUT, None), _FanOut):
        object.__setattr__(model, FAN_OUT, _FanOut(model))
    return getattr(model, FAN_OUT)


def _fused_hidden(model, input_ids: torch.Tensor, heads: list[Head], masking: str,
                  gates: HeadGates | None = None) -> torch.Tensor:
    """Last hidden states of the fused pass, (2 x rows, length-1): the full rows, then the masked ones.

    The layers below the first masked one run on the B rows once with open gates; from there on the
    rows are [full; masked] and the masked layers' gates are closed over the second half only."""
    gates = gates or HeadGates(model, heads, masking)
    rows = input_ids.shape[0]
    masked_rows = torch.arange(2 * rows, device=input_ids.device) >= rows
    with fan_out(model).from_layer(min(layer for layer, _ in heads)), gates.closed(masked_rows):
        return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
