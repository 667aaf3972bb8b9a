"""Paths that exist for speed must not change results: OOM retry, device placement, bf16 on GPU."""

from __future__ import annotations

import random

import pytest
import torch

from attention_influence.losses import Scorer
from tests.tiny_models import CharTokenizer, tiny_model

HEADS = [(1, 0), (2, 3)]


def texts(n=10, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefgh ij") for _ in range(rng.randint(5, 120))) for _ in range(n)]


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch):
    model = tiny_model("llama")
    expected = Scorer(model, CharTokenizer(), HEADS, max_seq_len=64).score(texts())
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=64, batch_tokens=10_000)
    real_run = Scorer._run

    def run_with_small_memory(self, windows, batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, windows, batch)

    monkeypatch.setattr(Scorer, "_run", run_with_small_memory)
    got = scorer.score(texts())
    assert scorer.stats["oom_splits"] >= 2
    for a, b in zip(got, expected):
        assert a.loss_full == pytest.approx(b.loss_full, abs=1e-5)
        assert a.loss_masked == pytest.approx(b.loss_masked, abs=1e-5)


def test_other_errors_are_not_swallowed(monkeypatch):
    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64)
    monkeypatch.setattr(Scorer, "_run", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scorer.score(texts())


def test_padding_waste_is_small_with_token_budget_batches():
    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64, batch_tokens=512)
    scorer.score(texts(200, seed=1))
    waste = 1 - scorer.stats["real_tokens"] / scorer.stats["padded_tokens"]
    assert waste < 0.10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_float32_matches_cpu_and_bfloat16_is_close():
    cpu = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64).score(texts())
    gpu = Scorer(tiny_model("llama").cuda(), CharTokenizer(), HEADS, max_seq_len=64).score(texts())
    bf16 = Scorer(tiny_model("llama").to("cuda", torch.bfloat16), CharTokenizer(), HEADS, max_seq_len=64).score(texts())
    for c, g, b in zip(cpu, gpu, bf16):
        assert g.loss_full == pytest.approx(c.loss_full, abs=1e-4)
        assert g.loss_masked == pytest.approx(c.loss_masked, abs=1e-4)
        assert b.loss_full == pytest.approx(c.loss_full, rel=2e-2)


def test_a_document_that_breaks_the_model_fails_alone(monkeypatch):
    from udfs.influence import ScoringSettings, score_frame
    import pandas as pd

    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64)
    real_run = Scorer._run

    def run_failing_on_poison(self, windows, batch):
        if any(len(windows[i]) == 1 + len("poison") for i in batch):
            raise RuntimeError("device-side assert triggered")
        return real_run(self, windows, batch)

    monkeypatch.setattr(Scorer, "_run", run_failing_on_poison)
    settings = ScoringSettings(model="unused", heads=tuple(HEADS), max_seq_len=64, dtype="float32",
                               text_col="text", carry_cols=("id",))
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": ["fine text", "poison", "more fine text"]})
    out = score_frame(scorer, frame, settings)
    assert list(out["id"]) == ["a", "b", "c"]
    assert list(out["status"]) == ["ok", "error", "ok"]
    assert "device-side assert" in out["error"][1]
