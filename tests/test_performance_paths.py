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
    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64)
    real_run = Scorer._run

    def run_failing_on_poison(self, windows, batch):
        if any(len(windows[i]) == 1 + len("poison") for i in batch):
            raise RuntimeError("device-side assert triggered")
        return real_run(self, windows, batch)

    monkeypatch.setattr(Scorer, "_run", run_failing_on_poison)
    docs = scorer.finish_isolated(scorer.prepare(["fine text", "poison", "more fine text"]))
    assert [d.status for d in docs] == ["ok", "error", "ok"]
    assert "device-side assert" in docs[1].error
    monkeypatch.setattr(Scorer, "_run", real_run)
    expected = [scorer.score([text])[0] for text in ["fine text", "more fine text"]]
    for got, alone in zip([docs[0], docs[2]], expected):
        assert (got.loss_full, got.loss_masked) == pytest.approx((alone.loss_full, alone.loss_masked), abs=1e-5)


def test_pooled_udf_path_gives_each_row_once_in_order_and_isolates_a_bad_document(monkeypatch):
    """Pools cut across Arrow batches; without parts, one frame per pool in input order, equal to scoring alone."""
    import pandas as pd

    import udfs.influence as influence

    # zero-output: the independent reference below (real_score_alone) masks that way
    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=16, batch_tokens=64,
                    masking="zero-output")
    monkeypatch.setattr(influence, "get_scorer", lambda settings, gpu: scorer)
    real_run = Scorer._run
    poison = scorer.tokenize("poison")[0]

    def run_failing_on_poison(self, windows, batch):
        if any(windows[i] == poison for i in batch):
            raise RuntimeError("device-side assert triggered")
        return real_run(self, windows, batch)

    monkeypatch.setattr(Scorer, "_run", run_failing_on_poison)
    settings = influence.ScoringSettings(model="unused", heads=tuple(HEADS), max_seq_len=16, dtype="float32",
                                         text_col="text", carry_cols=("id",))
    docs = texts(11, seed=3)
    docs[6] = "poison"
    frames = [pd.DataFrame({"id": [str(i) for i in range(a, b)], "text": docs[a:b]})
              for a, b in [(0, 4), (4, 4), (4, 7), (7, 8), (8, 11)]]
    out = list(influence.score_pooled(iter(frames), settings, None, pool_rows=5, part_seconds=None))
    # pool 1 in one frame; pool 2 (the poison's) isolated, a frame per document; pool 3 in one frame
    assert [list(f["id"]) for f in out] == [[str(i) for i in range(5)]] + [[str(i)] for i in range(5, 10)] + [["10"]]
    got = pd.concat(out, ignore_index=True)
    assert list(got["status"]) == ["ok"] * 6 + ["error"] + ["ok"] * 4
    reference = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=16)
    for row, text in zip(got.itertuples(), docs):
        if text == "poison":
            assert "device-side assert" in row.error
            continue
        alone = real_score_alone(reference, text)
        assert row.loss_full == pytest.approx(alone.loss_full, abs=1e-5)
        assert row.loss_masked == pytest.approx(alone.loss_masked, abs=1e-5)


def real_score_alone(scorer, text):
    from attention_influence.windows import split_windows

    ids = scorer.tokenize(text)[0]
    windows = [w for w in split_windows(ids, scorer.max_seq_len) if len(w) >= 2]
    model = scorer.model
    full, masked = [], []
    from attention_influence.masking import mask_heads

    with torch.inference_mode():
        for window in windows:
            batch = torch.tensor([window])
            full.append(torch.nn.functional.cross_entropy(model(batch).logits[0, :-1], batch[0, 1:], reduction="none"))
            with mask_heads(model, HEADS, mode="zero-output"):
                masked.append(torch.nn.functional.cross_entropy(model(batch).logits[0, :-1], batch[0, 1:],
                                                                reduction="none"))
    from types import SimpleNamespace

    return SimpleNamespace(loss_full=float(torch.cat(full).double().mean()),
                           loss_masked=float(torch.cat(masked).double().mean()))


def test_prefetch_thread_hands_its_error_to_the_consumer():
    from udfs.influence import _ahead

    def broken():
        yield 1
        raise ValueError("model file is corrupt")

    got = []
    with pytest.raises(ValueError, match="corrupt"):
        for item in _ahead(broken()):
            got.append(item)
    assert got == [1]


def test_flop_model_matches_a_hand_count():
    """SmolLM2-135M, windows of 256 tokens, masked heads from layer 17 of 30 (the issue's ~1.29)."""
    from benchmarks.flops import SMOLLM2_135M, fused_flops, mean_context, predicted_fused_ratio, two_pass_flops

    context = mean_context([256])
    assert context == 128.5
    # by hand: q,o 2*2*576*576; k,v 2*2*576*(3*64); QK^T and AV 2*2*128.5*576; MLP 3*2*576*1536
    layer = 2 * 2 * 576 * 576 + 2 * 2 * 576 * 192 + 2 * 2 * 128.5 * 576 + 3 * 2 * 576 * 1536
    head = 2 * 576 * 49152
    assert two_pass_flops(SMOLLM2_135M, context) == pytest.approx(2 * (30 * layer + head))
    assert fused_flops(SMOLLM2_135M, 17, context) == pytest.approx(30 * layer + 13 * layer + 2 * head)
    assert predicted_fused_ratio(SMOLLM2_135M, 17, context) == pytest.approx(1.29, abs=0.01)
    assert predicted_fused_ratio(SMOLLM2_135M, 0, context) == pytest.approx(1.0)


def test_finished_documents_come_out_in_parts_while_a_pool_runs(monkeypatch):
    """A pool hands on the documents it has finished as it goes (parts), each document once, with the
    scores of the one-shot `finish`; regrouping Arrow batches into pools keeps every row in order."""
    import pandas as pd

    import udfs.influence as influence
    from attention_influence.losses import Scorer
    from tests.tiny_models import CharTokenizer, tiny_model

    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=16, batch_tokens=32)
    docs = texts(12, seed=5) + ["", "x"]  # a blank one and a one-token one: final without a forward pass
    prepared = scorer.prepare(docs)
    parts = list(scorer.finish_in_parts(prepared, seconds=0.0))
    assert len(parts) > 2  # a part after every batch at seconds=0
    indices = [i for part in parts for i, _ in part]
    assert sorted(indices) == list(range(len(docs)))
    whole = scorer.finish(scorer.prepare(docs))
    for part in parts:
        for i, doc in part:
            assert (doc.status, doc.n_tokens) == (whole[i].status, whole[i].n_tokens)
            if doc.loss_full is not None:
                assert (doc.loss_full, doc.loss_masked) == pytest.approx((whole[i].loss_full, whole[i].loss_masked),
                                                                         abs=1e-6)

    monkeypatch.setattr(influence, "get_scorer", lambda settings, gpu: scorer)
    settings = influence.ScoringSettings(model="unused", heads=tuple(HEADS), max_seq_len=16, dtype="float32",
                                         text_col="text", carry_cols=("id",))
    frames = [pd.DataFrame({"id": [str(i) for i in range(a, b)], "text": docs[a:b]})
              for a, b in [(0, 3), (3, 3), (3, 11), (11, 14)]]
    out = list(influence.score_pooled(iter(frames), settings, None, pool_rows=6, part_seconds=0.0))
    assert len(out) > 3
    got = pd.concat(out, ignore_index=True)
    assert sorted(got["id"], key=int) == [str(i) for i in range(len(docs))]
    by_id = got.set_index("id")
    assert [by_id.loc[str(i), "n_tokens"] for i in range(len(docs))] == [d.n_tokens for d in whole]

    pools = [list(pool["id"]) for pool in influence._pools(iter(frames), 5)]
    assert [len(p) for p in pools] == [5, 5, 4] and sum(pools, []) == [str(i) for i in range(14)]
