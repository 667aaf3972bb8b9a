"""Retrieval-head detection as in AttentionInfluence (arXiv 2505.07293 §3, Appendix A; after Wu et al. 2024):
every head scored on samples of the proxy task (`retrieval_task`), the top fraction selected, the heads JSON.

A head's *retrieval score* on a sample is |g ∩ k| / |k|: k are the value's
tokens in the context, g the ones the model produced while the head's highest
attention weight pointed at exactly that token of the value (copy-paste). A
head's score is the mean over samples; the top `top_fraction` of all heads are
the retrieval heads. "Produced" is the model's greedy prediction at each answer
position given the true value so far (teacher-forced, one forward pass), or, as
Wu et al. do, a free greedy answer decoded with a KV cache (`decoding="greedy"`):
small models rarely answer right when decoding freely (SmolLM2-135M: none of 9 tried
samples), which leaves every head near zero. The task accuracy (exact value,
greedy decoding) is measured separately, with and without heads masked.
"""

from __future__ import annotations

import json
import os
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from attention_influence.masking import DEFAULT_MASKING, attention_modules, head_layout, mask_heads
from attention_influence.retrieval_task import RetrievalSample, encode_sample, tokens_inside

RANDOM_DRAWS = 5
# How "the tokens the model produces" are obtained for the score: its greedy prediction at each answer position
# given the true value so far (one forward pass), or a free greedy answer (Wu et al.). SmolLM2-135M answers
# almost no sample right when decoding freely, which leaves every head near 0 (see docs/method.md).
DECODINGS = ("teacher-forced", "greedy")
DEFAULT_DECODING = "teacher-forced"


# ------------------------------------------------------------------------------------------ greedy answers

def _stops(tokenizer, token: int) -> bool:
    if token == tokenizer.eos_token_id:
        return True
    piece = tokenizer.decode([token])
    return '"' in piece or "\n" in piece


def _greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int,
            on_step: Callable[[int], None] | None = None, before_decode: Callable[[], None] | None = None,
            expected: str | None = None) -> list[int]:
    """Greedy answer with a KV cache: the prompt but its last token in one pass, then one token per step
    (the first step feeds the prompt's last token and produces the first answer token). `on_step(token)`
    runs after each step, `before_decode()` once between the prefill and the first step. With `expected`,
    decoding stops as soon as the answer can no longer be `expected` (exact match is all that is asked)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    cache = model(input_ids=ids[:, :-1], use_cache=True).cache
    if before_decode is not None:
        before_decode()
    token = ids[:, -1:]
    produced: list[int] = []
    for _ in range(max_new_tokens):
        out = model(input_ids=token, cache=cache, use_cache=True)
        cache = out.cache
        next_token = int(out.logits[0, -1].argmax())
        produced.append(next_token)
        if on_step is not None:
            on_step(next_token)
        if _stops(tokenizer, next_token):
            break
        if expected is not None:
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if not (expected.startswith(text) or text.startswith(expected)):
                break
        token = torch.tensor([[next_token]], device=device)
    return produced


def _max_new_tokens(needle: list[int]) -> int:
    return len(needle) + 4  # the value, a token merged with the closing quote, slack for other splits


def is_exact(tokenizer, produced: list[int], sample: RetrievalSample) -> bool:
    """The model wrote the value and closed its quote."""
    return tokenizer.decode(produced, skip_special_tokens=True).startswith(sample.answer)


# ------------------------------------------------------------------------------------------ scores

@dataclass
class RetrievalScores:
    """Per-head retrieval scores, shape (layers, heads): the mean over samples of |g ∩ k| / |k|."""

    scores: np.ndarray
    samples: int
    exact_matches: int | None  # samples whose value the model reproduced exactly (greedy decoding only)
    answer_tokens: int  # value tokens over all samples (sum of |k|)
    copied_tokens: int  # of those, the ones the model produced in their place
    sample_scores: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def accuracy(self) -> float | None:
        return None if self.exact_matches is None else self.exact_matches / max(self.samples, 1)


def _weights_hook(store: dict, layer: int, rows):
    """Forward hook of an attention module: the key position each head attends most from query `rows`."""
    def hook(_module, _args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("attention weights unavailable: load the model with attn_implementation='eager'")
        store[layer] = weights[0, :, rows, :].argmax(dim=-1)  # (heads, len(rows)) or (heads,)
    return hook


@torch.inference_mode()
def teacher_forced_sample_scores(model, tokenizer, sample: RetrievalSample) -> tuple[np.ndarray, list[int], list[int]]:
    """(|g ∩ k| / |k| per head, shape (layers, heads); the model's greedy prediction at each answer position;
    the answer's token ids) for one sample, in one forward pass over prompt + answer. The prediction for
    answer token t is made at position t-1 from the true prefix."""
    n_layers, n_heads, _ = head_layout(model)
    enc = tokenizer(sample.prompt + sample.answer, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    needle = tokens_inside(enc["offset_mapping"], sample.needle_span)
    start = len(sample.prompt)
    answer = tokens_inside(enc["offset_mapping"], (start, start + len(sample.value)))
    if not needle or not answer:
        raise ValueError(f"the value of key {sample.key} has no whole token in the prompt or the answer")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    query = torch.tensor([a - 1 for a in answer], device=device)
    in_value = torch.zeros(len(ids), dtype=torch.bool, device=device)
    in_value[needle] = True
    pointed: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(_weights_hook(pointed, i, query))
               for i, m in enumerate(attention_modules(model))]
    try:
        produced = model(input_ids=input_ids).logits[0, query].argmax(dim=-1)  # (answer,)
    finally:
        for handle in handles:
            handle.remove()
    positions = torch.stack([pointed[layer] for layer in range(n_layers)]).view(n_layers * n_heads, -1)
    hit = in_value[positions] & (input_ids[0, positions] == produced.unsqueeze(0))
    rows, steps = hit.nonzero(as_tuple=True)
    copied = torch.zeros(n_layers * n_heads, len(ids), dtype=torch.bool, device=device)  # g, per head
    copied[rows, positions[rows, steps]] = True
    score = copied[:, needle].sum(dim=-1).double() / len(needle)
    return score.view(n_layers, n_heads).cpu().numpy(), produced.tolist(), [ids[a] for a in answer]


@torch.inference_mode()
def greedy_sample_scores(model, tokenizer, sample: RetrievalSample) -> tuple[np.ndarray, list[int], list[int]]:
    """(|g ∩ k| / |k| per head, shape (layers, heads); the greedy answer; k's token ids) for one sample,
    decoding the answer greedily as Wu et al. do."""
    n_layers, n_heads, _ = head_layout(model)
    prompt_ids, needle = encode_sample(tokenizer, sample)
    if not needle:
        raise ValueError(f"the value of key {sample.key} has no whole token in the prompt")
    max_new = _max_new_tokens(needle)
    length = len(prompt_ids) + max_new
    device = next(model.parameters()).device
    in_value = torch.zeros(length, dtype=torch.bool, device=device)
    in_value[needle] = True
    context_ids = torch.full((length,), -1, dtype=torch.long, device=device)
    context_ids[:len(prompt_ids)] = torch.tensor(prompt_ids, device=device)
    copied = torch.zeros(n_layers * n_heads, length, dtype=torch.bool, device=device)  # g, per head
    pointed: dict[int, torch.Tensor] = {}

    def on_step(token: int) -> None:
        positions = torch.stack([pointed[layer] for layer in range(n_layers)]).flatten()  # (layers * heads,)
        hit = in_value[positions] & (context_ids[positions] == token)
        rows = hit.nonzero().flatten()
        copied[rows, positions[rows]] = True

    handles: list = []

    def register() -> None:  # only for the answer: the prefill's weights are not needed
        handles.extend(m.register_forward_hook(_weights_hook(pointed, i, -1))
                       for i, m in enumerate(attention_modules(model)))

    try:
        produced = _greedy(model, tokenizer, prompt_ids, max_new, on_step=on_step, before_decode=register)
    finally:
        for handle in handles:
            handle.remove()
    score = copied[:, needle].sum(dim=-1).double() / len(needle)
    return score.view(n_layers, n_heads).cpu().numpy(), produced, [prompt_ids[i] for i in needle]


def retrieval_scores(model, tokenizer, samples: Sequence[RetrievalSample], decoding: str = DEFAULT_DECODING,
                     progress: Callable[[], None] | None = None) -> RetrievalScores:
    """Score every head on `samples` (per-sample scores, then their mean); `progress()` after each sample.
    The model must run eager attention: the score needs each head's attention weights."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
    n_layers, n_heads, _ = head_layout(model)
    per_sample = []
    exact = answer_total = copied_total = 0
    for sample in samples:
        if decoding == "greedy":
            score, produced, value_ids = greedy_sample_scores(model, tokenizer, sample)
            exact += is_exact(tokenizer, produced, sample)
        else:
            score, produced, value_ids = teacher_forced_sample_scores(model, tokenizer, sample)
        per_sample.append(score)
        answer_total += len(value_ids)
        copied_total += sum(p == v for p, v in zip(produced, value_ids))
        if progress is not None:
            progress()
    scores = np.mean(per_sample, axis=0) if per_sample else np.zeros((n_layers, n_heads))
    return RetrievalScores(scores=scores, samples=len(per_sample),
                           exact_matches=exact if decoding == "greedy" else None, answer_tokens=answer_total,
                           copied_tokens=copied_total, sample_scores=per_sample)


@torch.inference_mode()
def task_accuracy(model, tokenizer, samples: Sequence[RetrievalSample], heads: Sequence[tuple[int, int]] = (),
                  masking: str = DEFAULT_MASKING, progress: Callable[[], None] | None = None) -> float:
    """Share of samples whose value the model reproduces exactly (greedy), with `heads` masked if any."""
    exact = 0
    with mask_heads(model, heads, mode=masking) if heads else nullcontext():
        for sample in samples:
            prompt_ids, needle = encode_sample(tokenizer, sample)
            produced = _greedy(model, tokenizer, prompt_ids, _max_new_tokens(needle), expected=sample.answer)
            exact += is_exact(tokenizer, produced, sample)
            if progress is not None:
                progress()
    return exact / max(len(samples), 1)


def masking_accuracies(model, tokenizer, samples: Sequence[RetrievalSample], heads: Sequence[tuple[int, int]],
                       masking: str = DEFAULT_MASKING, seed: int = 0, accuracy_full: float | None = None,
                       draws: int = RANDOM_DRAWS, progress: Callable[[], None] | None = None) -> dict:
    """Task accuracy of the full model, with `heads` masked, and with as many random other heads masked
    (mean of `draws` seeded draws), as stored in the heads JSON."""
    if accuracy_full is None:
        accuracy_full = task_accuracy(model, tokenizer, samples, progress=progress)
    n_layers, n_heads, _ = head_layout(model)
    selected = set(heads)
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in selected]
    rng = random.Random(seed)
    random_heads = [sorted(rng.sample(others, min(len(heads), len(others)))) for _ in range(draws)]
    masked = task_accuracy(model, tokenizer, samples, heads, masking, progress)
    random_masked = [task_accuracy(model, tokenizer, samples, pick, masking, progress) for pick in random_heads]
    return {
        "accuracy_full": accuracy_full,
        "accuracy_masked": masked,
        "accuracy_random_masked": float(np.mean(random_masked)),
        "accuracy_random_masked_draws": random_masked,
    }


def head_ranking(scores: np.ndarray) -> list[tuple[int, int]]:
    """Every head, best first: score descending, ties to the lower (layer, head). `select_heads`
    takes its top fraction from this order and the head_scores table's `rank` is a place in it."""
    n_layers, n_heads = scores.shape
    return sorted(((layer, head) for layer in range(n_layers) for head in range(n_heads)),
                  key=lambda lh: (-scores[lh], lh))


def select_heads(scores: np.ndarray, top_fraction: float) -> list[tuple[int, int]]:
    """The top `top_fraction` of all heads by score (at least one), ties broken by (layer, head)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    k = max(1, math.ceil(top_fraction * scores.size))
    return sorted(head_ranking(scores)[:k])


def heads_document(model_name: str, revision: str | None, top_fraction: float,
                   heads: list[tuple[int, int]], scores: np.ndarray, **extra) -> dict:
    """The heads JSON of SPEC §2; `extra` adds the task accuracies and the task's settings."""
    return {
        "model": model_name,
        "model_revision": revision,
        "top_fraction": top_fraction,
        "heads": [[int(l), int(h)] for l, h in heads],
        "scores": {f"{l}.{h}": float(scores[l, h]) for l in range(scores.shape[0]) for h in range(scores.shape[1])},
        **extra,
    }


MAX_HEADS_FILE_BYTES = 16 << 20  # a heads JSON of a 100-layer x 100-head model is well under 1 MB


def load_heads(path: str) -> list[tuple[int, int]]:
    """Read the heads JSON; a clear error for anything malformed."""
    try:
        if os.path.getsize(path) > MAX_HEADS_FILE_BYTES:
            raise ValueError(f"{os.path.getsize(path)} bytes, more than the {MAX_HEADS_FILE_BYTES} allowed")
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        heads = [(int(l), int(h)) for l, h in doc["heads"]]
    except FileNotFoundError:
        raise ValueError(f"heads file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError, RecursionError, OSError) as exc:
        detail = str(exc).splitlines()[0][:200] if str(exc).strip() else ""
        raise ValueError(f"heads file {path} is not a heads JSON ({exc.__class__.__name__}: {detail})") from None
    return sorted(set(heads))
