"""Retrieval-head detection (AttentionInfluence §2, after Wu et al. 2024).

The synthetic task: a context of hash-like keys (32 hex characters) each
mapped to a short value passage, a few solved questions, then one key whose
value the model must reproduce. A head's *retrieval score* is the share of
answer tokens for which the model's greedy token equals the token that the
head's argmax attention points at inside the needle (the queried value in the
context): copy-paste behaviour.

The answer is teacher-forced (one forward pass per sample instead of a
generation loop); a step counts only when the model's own greedy token is the
copied one, so a head is credited for copying the model really does.
"""

from __future__ import annotations

import json
import os
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from attention_influence.masking import attention_modules, head_layout

# Plain English words; values are random phrases of these so the model cannot
# guess them from priors and must copy.
WORDS = (
    "apple river stone light window garden silver paper music winter summer forest "
    "market engine bridge candle doctor island letter mirror number orange pencil "
    "rocket shadow tiger valley wallet yellow anchor basket castle dragon eagle "
    "feather guitar harbor jacket kettle ladder magnet needle ocean palace quartz "
    "rabbit saddle tunnel umbrella violin wagon zebra cloud metal honey pepper "
    "planet signal ticket velvet bottle copper desert fabric glacier hammer insect "
    "jungle kitten lemon marble nickel oyster parrot quiet ribbon salmon timber"
).split()

INSTRUCTION = "Below is a JSON object of keys and values. Return the value of the requested key.\n"


@dataclass
class RetrievalSample:
    """One prompt with the character spans needed to score copying."""

    text: str
    needle_span: tuple[int, int]  # characters of the queried value inside the context
    answer_span: tuple[int, int]  # characters of the value in the final answer (end of text)


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(32))


def random_value(rng: random.Random, n_words: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_sample(rng: random.Random, n_pairs: int = 12, n_shots: int = 3, value_words: int = 6) -> RetrievalSample:
    """Context of `n_pairs` key/value pairs, `n_shots` solved questions, one open question."""
    pairs = [(random_key(rng), random_value(rng, value_words)) for _ in range(n_pairs)]
    order = list(range(n_pairs))
    rng.shuffle(order)
    shots, target = order[:n_shots], order[n_shots % n_pairs]

    text = INSTRUCTION + "{"
    needle_span = (0, 0)
    for i, (key, value) in enumerate(pairs):
        sep = ", " if i else ""
        text += f'{sep}"{key}": "'
        if i == target:
            needle_span = (len(text), len(text) + len(value))
        text += value + '"'
    text += "}\n"
    for i in shots:
        text += f'Key: "{pairs[i][0]}"\nValue: "{pairs[i][1]}"\n'
    text += f'Key: "{pairs[target][0]}"\nValue: "'
    answer_span = (len(text), len(text) + len(pairs[target][1]))
    text += pairs[target][1] + '"'
    return RetrievalSample(text, needle_span, answer_span)


def build_samples(tokenizer, n_samples: int, context_tokens: int, seed: int, n_shots: int = 3) -> list[RetrievalSample]:
    """Samples whose prompts are about `context_tokens` tokens long (never longer)."""
    rng = random.Random(seed)
    probe = build_sample(random.Random(seed), n_pairs=8, n_shots=n_shots)
    tokens_per_pair = len(tokenizer(probe.text)["input_ids"]) / (8 + n_shots + 1)
    n_pairs = max(n_shots + 1, int(context_tokens / tokens_per_pair) - n_shots - 1)
    samples = []
    while len(samples) < n_samples:
        sample = build_sample(rng, n_pairs=n_pairs, n_shots=n_shots)
        if len(tokenizer(sample.text)["input_ids"]) > context_tokens:
            if n_pairs == n_shots + 1:
                raise ValueError(f"--context-tokens {context_tokens} is too short for a prompt of "
                                 f"{n_pairs} key/value pairs with this tokenizer")
            n_pairs -= 1
            continue
        samples.append(sample)
    return samples


def _token_positions(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    start, end = span
    return [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]


@dataclass
class RetrievalScores:
    """Per-head retrieval scores, shape (layers, heads), plus counts behind them."""

    scores: np.ndarray
    answer_tokens: int
    copied_tokens: int  # answer tokens the model itself got right (greedy)
    samples: int = 0
    details: dict = field(default_factory=dict)


@torch.inference_mode()
def retrieval_scores(model, tokenizer, samples: list[RetrievalSample]) -> RetrievalScores:
    """Score every head on `samples`; the model must use eager attention (weights are needed)."""
    n_layers, n_heads, _ = head_layout(model)
    modules = attention_modules(model)
    hits = np.zeros((n_layers, n_heads), dtype=np.int64)
    answer_total = copied_total = 0
    device = next(model.parameters()).device

    for sample in samples:
        enc = tokenizer(sample.text, return_offsets_mapping=True)
        ids = enc["input_ids"]
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        needle = _token_positions(offsets, sample.needle_span)
        answer = _token_positions(offsets, sample.answer_span)
        if not needle or not answer or answer[0] == 0:
            continue
        # The query position for answer token t is t-1: it produces t.
        query = torch.tensor([t - 1 for t in answer], device=device)
        needle_mask = torch.zeros(len(ids), dtype=torch.bool, device=device)
        needle_mask[needle] = True
        input_ids = torch.tensor([ids], device=device)

        pointed: dict[int, torch.Tensor] = {}

        def make_hook(layer: int):
            def hook(_module, _args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise RuntimeError("attention weights unavailable: load the model with attn_implementation='eager'")
                pointed[layer] = weights[0, :, query, :].argmax(dim=-1)  # (heads, answer)
            return hook

        handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(modules)]
        try:
            logits = model(input_ids=input_ids).logits[0, query]
        finally:
            for h in handles:
                h.remove()
        produced = logits.argmax(dim=-1)  # (answer,)
        copied = produced == input_ids[0, query + 1]
        answer_total += len(answer)
        copied_total += int(copied.sum())
        for layer, positions in pointed.items():
            in_needle = needle_mask[positions]
            same_token = input_ids[0, positions] == produced.unsqueeze(0)
            hits[layer] += (in_needle & same_token).sum(dim=-1).cpu().numpy()

    scores = hits / max(answer_total, 1)
    return RetrievalScores(scores=scores, answer_tokens=answer_total, copied_tokens=copied_total, samples=len(samples))


def select_heads(scores: np.ndarray, top_fraction: float) -> list[tuple[int, int]]:
    """The top `top_fraction` of all heads by score (at least one), ties broken by (layer, head)."""
    if not 0 < top_fraction <= 1:
        raise ValueError(f"--top-fraction must be in (0, 1], got {top_fraction}")
    n_layers, n_heads = scores.shape
    k = max(1, math.ceil(top_fraction * n_layers * n_heads))
    order = sorted(((-scores[l, h], l, h) for l in range(n_layers) for h in range(n_heads)))
    return sorted((l, h) for _, l, h in order[:k])


def heads_document(model_name: str, revision: str | None, top_fraction: float,
                   heads: list[tuple[int, int]], scores: np.ndarray) -> dict:
    """The heads JSON of SPEC §2."""
    return {
        "model": model_name,
        "model_revision": revision,
        "top_fraction": top_fraction,
        "heads": [[int(l), int(h)] for l, h in heads],
        "scores": {f"{l}.{h}": float(scores[l, h]) for l in range(scores.shape[0]) for h in range(scores.shape[1])},
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
