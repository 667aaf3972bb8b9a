"""Masking is data: gates installed once with the scorer, set in place per pass, no hooks per batch."""

from __future__ import annotations

import pytest
import torch

from attention_influence.losses import Scorer
from attention_influence.masking import GATE, ROWS, gated_modules
from tests.test_core_losses import HEADS
from tests.tiny_models import CharTokenizer, tiny_model

TEXTS = ["the quick brown fox jumps over the lazy dog " * 3, "abc" * 30, "short", "hello world " * 9]


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
               for m in model.modules())


@pytest.mark.parametrize("masking", ["uniform", "zero-output"])
@pytest.mark.parametrize("fused", [True, False])
def test_scoring_installs_no_hook_per_batch_and_leaves_every_gate_open(masking, fused):
    model = tiny_model("llama")
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=24, batch_tokens=48, fused=fused, masking=masking)
    hooks = hook_count(model)
    gates = [getattr(m, GATE) for m in gated_modules(model, masking)]
    rows = [getattr(m, ROWS) for m in gated_modules(model, masking)]
    shapes = [(g.shape, r.shape) for g, r in zip(gates, rows)]
    docs = scorer.score(TEXTS)
    assert scorer.stats["padded_tokens"] > 48  # several batches
    assert hook_count(model) == hooks
    assert all(abs(d.loss_masked - d.loss_full) > 1e-6 for d in docs)  # random tiny weights: small, not 0
    for module, gate, applies in zip(gated_modules(model, masking), gates, rows):
        assert getattr(module, GATE) is gate and getattr(module, ROWS) is applies  # the same buffers, set in place
        assert bool((gate == 1).all())
    assert [(g.shape, r.shape) for g, r in zip(gates, rows)] == shapes  # fixed shapes: no recompiling
    ids = torch.tensor([CharTokenizer()(TEXTS[0])["input_ids"]])
    with torch.no_grad():  # open gates: exactly the model as built
        torch.testing.assert_close(model(input_ids=ids).logits, tiny_model("llama")(input_ids=ids).logits,
                                   atol=0, rtol=0)


def test_gates_leave_the_state_dict_and_parameter_names_as_they_were():
    model = tiny_model("qwen3")
    before = dict(model.state_dict())
    names = [name for name, _ in model.named_parameters()]
    gated_modules(model, "uniform")
    gated_modules(model, "zero-output")
    assert list(model.state_dict()) == list(before)
    assert [name for name, _ in model.named_parameters()] == names
    model.load_state_dict(before)
    assert all(isinstance(m, torch.nn.Linear) for m in gated_modules(model, "uniform"))


@pytest.mark.parametrize("masking", ["uniform", "zero-output"])
def test_batches_with_more_rows_than_the_rows_buffer_are_masked_in_every_row(masking):
    """The rows buffer starts at 64 rows; a wider batch, open or masked in every row, is still right."""
    from attention_influence.masking import mask_heads

    model = tiny_model("llama")
    ids = torch.randint(3, 40, (70, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with mask_heads(model, HEADS, mode=masking):  # installs the gates, 64 rows
            assert getattr(gated_modules(model, masking)[0], ROWS).shape[0] < 70
            every_row = model(input_ids=ids).logits
        open_gates = model(input_ids=ids).logits
        with mask_heads(model, HEADS, masked_rows=torch.ones(70, dtype=torch.bool), mode=masking):
            by_rows = model(input_ids=ids).logits
    torch.testing.assert_close(open_gates, tiny_model("llama")(input_ids=ids).logits, atol=0, rtol=0)
    torch.testing.assert_close(every_row, by_rows, atol=0, rtol=0)
    assert not torch.allclose(every_row, open_gates)


def test_a_gated_model_pickles_and_keeps_its_masking():
    import pickle

    from attention_influence.masking import mask_heads

    model = tiny_model("gpt2")
    ids = torch.tensor([[1, 5, 7, 9, 11, 4]])
    with torch.no_grad(), mask_heads(model, HEADS, mode="uniform"):
        masked = model(input_ids=ids).logits
    copy = pickle.loads(pickle.dumps(model))
    with torch.no_grad(), mask_heads(copy, HEADS, mode="uniform"):
        torch.testing.assert_close(copy(input_ids=ids).logits, masked, atol=0, rtol=0)
