"""torch.compile of the decoder layers with the masking as data (attention_influence.compiling)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from attention_influence.compiling import compile_layers, is_compiled, uncompile_layers
from attention_influence.losses import Scorer
from tests.test_core_losses import HEADS
from tests.tiny_models import CharTokenizer, tiny_model

# Batches of several row counts (1, 2, 3) and lengths, in two rounds of different shapes.
WARM_UP = ["def add(a, b):\n    return a + b\n" * 6, "The licence grants permission to copy. " * 12, "A short one."]
NEW_SHAPES = ["Another text of a different length, " * 9, "x = [i * i for i in range(10)]\n" * 4, "tiny words, then a few more",
              "Some more words here " * 3]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
def test_compiled_layers_mask_like_eager_with_a_bounded_number_of_graphs(real_model, fresh_dynamo, fused):
    """SmolLM2, float32: compiled once, the layers score batches of new shapes without compiling again,
    the masked pass is masked (the gates are inputs of the graph, not traced-away hooks) and every loss
    equals eager's to 1e-5."""
    from attention_influence.loading import load_model
    from benchmarks.gpu.shapes import SMOLLM2_HEADS

    model, tokenizer = load_model(real_model, dtype="float32", device="cpu")
    kwargs = dict(max_seq_len=48, batch_tokens=128, fused=fused)
    eager = Scorer(model, tokenizer, SMOLLM2_HEADS, **kwargs).score(WARM_UP + NEW_SHAPES)
    scorer = Scorer(model, tokenizer, SMOLLM2_HEADS, compile_mode="default", **kwargs)
    try:
        assert scorer.compile_skipped is None and is_compiled(model)
        torch._dynamo.utils.counters.clear()
        compiled = scorer.score(WARM_UP)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        compiled += scorer.score(NEW_SHAPES)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # new shapes: no new graph
    finally:
        uncompile_layers(model)
    # one graph per kind of call (a batch of one row; more rows, with the rotary tables tiled or not), never
    # one per batch, per pass or per layer
    assert 1 <= graphs <= 4, graphs
    assert not dict(torch._dynamo.utils.counters["graph_break"])
    assert len(compiled) == len(eager) and all(doc.status == "ok" for doc in eager)
    for a, b in zip(eager, compiled):
        assert b.loss_full == pytest.approx(a.loss_full, abs=1e-5)
        assert b.loss_masked == pytest.approx(a.loss_masked, abs=1e-5)
        assert abs(b.loss_masked - b.loss_full) > 1e-3  # the masking is visible in the compiled model


def test_cuda_graphs_stay_off_on_a_cpu_and_say_why(fresh_dynamo):
    model = tiny_model("llama")
    texts = ["abcdefgh " * 5, "ijk " * 9]
    eager = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16).score(texts)
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16, compile_mode="reduce-overhead")
    assert "CUDA" in scorer.compile_skipped and not is_compiled(model)
    for a, b in zip(eager, scorer.score(texts)):
        assert (b.loss_full, b.loss_masked) == (a.loss_full, a.loss_masked)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_layers(model, "fast")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_layers_on_the_gpu_match_eager(fresh_dynamo, mode):
    model = tiny_model("llama").cuda()
    texts = ["abcdefgh " * 5, "ijk " * 9, "lmnop " * 3]
    eager = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16, batch_tokens=32).score(texts)
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16, batch_tokens=32, compile_mode=mode)
    try:
        assert scorer.compile_skipped is None
        got = scorer.score(texts) + scorer.score(texts)
    finally:
        uncompile_layers(model)
    for a, b in zip(eager + eager, got):
        assert b.loss_full == pytest.approx(a.loss_full, abs=1e-4)
        assert b.loss_masked == pytest.approx(a.loss_masked, abs=1e-4)
