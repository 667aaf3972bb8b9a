"""Which kernels run the LM head + cross-entropy and the attention (`Scorer(loss_kernel=...,
attention_backends=...)`): the per-token losses of given last hidden states, three ways, and the
choice of SDPA kernels. All loss kernels give float32 losses equal to `F.cross_entropy`'s (the fused
`linear_cross_entropy` in its input's dtype, see there)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend


# How the LM head + cross-entropy runs (`Scorer(loss_kernel=...)`): "auto" is what measured fastest
# per device kind (vocabulary blocks on a CPU, row slices elsewhere; docs/benchmarks.md); the others
# are there so benchmarks/gpu.sh can compare them on a GPU and a user can pick one.
LOSS_KERNELS = ("auto", "row_slices", "vocab_blocks", "linear_cross_entropy")


def checked_loss_kernel(model, kernel: str) -> str:
    """`kernel`, or a clear error where this model's LM head cannot run it."""
    if kernel not in LOSS_KERNELS:
        raise ValueError(f"loss_kernel must be one of {', '.join(LOSS_KERNELS)}, got {kernel!r}")
    head = model.get_output_embeddings()
    if kernel in ("vocab_blocks", "linear_cross_entropy") and not isinstance(head, torch.nn.Linear):
        raise ValueError(f"loss_kernel {kernel!r} needs an nn.Linear LM head, this model has "
                         f"{type(head).__name__}; use 'auto' or 'row_slices'")
    if kernel == "linear_cross_entropy":
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError("loss_kernel 'linear_cross_entropy' cannot apply the model's final logit "
                             "softcapping; use 'auto', 'row_slices' or 'vocab_blocks'")
        if not hasattr(F, "linear_cross_entropy"):
            raise ValueError(f"loss_kernel 'linear_cross_entropy' needs torch >= 2.15 (this is {torch.__version__})")
    return kernel


def _token_losses(model, hidden: torch.Tensor, targets: torch.Tensor, max_logits: int = 1 << 25,
                  kernel: str = "auto") -> torch.Tensor:
    """Cross-entropy of each next token in float32 (rows, length), by `kernel` (LOSS_KERNELS; checked
    by the caller): "auto" takes the vocabulary in blocks on a CPU, elsewhere a slice of rows at a
    time (what has been measured on a GPU, docs/benchmarks.md)."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if kernel == "auto":
        kernel = "vocab_blocks" if hidden.device.type == "cpu" and isinstance(head, torch.nn.Linear) else "row_slices"
    if kernel == "vocab_blocks":
        return _vocab_blocked_losses(head, softcap, hidden, targets, max_logits)
    if kernel == "linear_cross_entropy":
        return _builtin_linear_losses(head, hidden, targets)
    return _row_sliced_losses(head, softcap, hidden, targets, max_logits)


def _builtin_linear_losses(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torch's fused `F.linear_cross_entropy` in its chunked form, which never builds the whole
    [tokens, vocab] logits. Its result has the inputs' dtype: on bfloat16 the per-token losses are
    rounded to bfloat16 (about 3 significant digits); document means stay within ~1e-4 of float32."""
    rows, length, width = hidden.shape
    options = torch.nn.LinearCrossEntropyOptions(acc_policy="accurate")
    losses = F.linear_cross_entropy(hidden.reshape(-1, width), head.weight, targets.reshape(-1),
                                    linear_bias=head.bias, reduction="none", options=options)
    return losses.float().view(rows, length)


def _softcapped(logits: torch.Tensor, softcap) -> torch.Tensor:
    """Gemma 2's final logit softcapping, where the config asks for it; both loss paths apply it."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _row_sliced_losses(head, softcap, hidden: torch.Tensor, targets: torch.Tensor, max_logits: int) -> torch.Tensor:
    """Cross-entropy with the whole vocabulary's logits for a slice of rows at a time."""
    rows, length, _ = hidden.shape
    vocab = head.weight.shape[0]
    step = max(1, max_logits // max(1, length * vocab))
    losses = []
    for start in range(0, rows, step):
        logits = _softcapped(head(hidden[start:start + step]).float(), softcap)
        part = targets[start:start + step]
        losses.append(F.cross_entropy(logits.reshape(-1, vocab), part.reshape(-1), reduction="none").view(part.shape))
    return torch.cat(losses)


def vocab_block_size(hidden_size: int, vocab: int) -> int:
    """Vocabulary rows per block: about 4 MiB of float32 weight, which stays in a CPU's cache, in a
    multiple of 256 rows (matrix multiplies of an odd width ran 1.5x slower on SmolLM2's head)."""
    return min(vocab, max(256, (1 << 20) // max(1, hidden_size) // 256 * 256))


def _vocab_blocked_losses(head: torch.nn.Linear, softcap, hidden: torch.Tensor, targets: torch.Tensor,
                          max_logits: int, block: int | None = None) -> torch.Tensor:
    """Cross-entropy with the vocabulary in blocks and a running log-sum-exp.

    The LM head's weight (SmolLM2: 49,152 x 576, 113 MB) does not fit in a CPU's cache, so one
    [tokens, vocab] product streams it from memory for every slice of tokens, and the logits then make
    two more trips through memory (log-softmax, gather). A block of the vocabulary is reused by every
    token while it is in cache, and its logits are reduced at once: about 1.5x faster on SmolLM2's
    head (docs/benchmarks.md, run 6). Same float32 values as `F.cross_entropy` to ~1e-6.
    """
    rows, length, width = hidden.shape
    vocab = head.weight.shape[0]
    flat_hidden, flat_targets = hidden.reshape(-1, width), targets.reshape(-1)
    if flat_targets.numel() and (int(flat_targets.min()) < 0 or int(flat_targets.max()) >= vocab):
        raise IndexError(f"target token id out of range for a vocabulary of {vocab}")
    block = block or vocab_block_size(width, vocab)  # `block`: a GPU benchmark tries larger ones
    token_step = max(1, max_logits // block)
    losses = []
    for token_start in range(0, flat_hidden.shape[0], token_step):
        part = flat_hidden[token_start:token_start + token_step]
        part_targets = flat_targets[token_start:token_start + token_step]
        running_max = torch.full((part.shape[0],), -math.inf, dtype=torch.float32, device=part.device)
        sum_exp = torch.zeros_like(running_max)
        target_logit = torch.zeros_like(running_max)
        for start in range(0, vocab, block):
            bias = head.bias[start:start + block] if head.bias is not None else None
            logits = _softcapped(F.linear(part, head.weight[start:start + block], bias).float(), softcap)
            local = part_targets - start
            picked = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            target_logit = torch.where((local >= 0) & (local < logits.shape[1]), picked, target_logit)
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            sum_exp = sum_exp * torch.exp(running_max - new_max) + logits.sub_(new_max[:, None]).exp_().sum(dim=1)
            running_max = new_max
        losses.append(running_max + torch.log(sum_exp) - target_logit)
    return torch.cat(losses).view(rows, length)


ATTENTION_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                      "math": "MATH"}


def checked_attention_backends(model, names: Sequence[str] | None) -> list | None:
    """torch's SDPBackend values for `names` (ATTENTION_BACKENDS), or a clear error. Whether a kernel
    can run is known only per batch (device, dtype, head size): where none of them can, the scorer
    stops with an error naming the setting (e.g. cuDNN on a CPU)."""
    if not names:
        return None
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in ATTENTION_BACKENDS]
    if unknown:
        raise ValueError(f"attention_backends: unknown {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(ATTENTION_BACKENDS)}")
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "sdpa":
        raise ValueError(f"attention_backends choose SDPA kernels, but this model runs {implementation!r} attention "
                         "(load it with attn_implementation='sdpa')")
    return [getattr(SDPBackend, ATTENTION_BACKENDS[n]) for n in names]
