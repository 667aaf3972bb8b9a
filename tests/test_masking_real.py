"""Uniform masking on the real model (SmolLM2-135M, float32): exact against the test-owned reference,
and a different operator from zero-output."""

import bisect
from pathlib import Path

import pytest
import torch

from attention_influence.loading import load_model
from attention_influence.losses import batch_losses
from tests.masking_reference import reference_uniform_losses

# 14 heads in layers 17-24 (SmolLM2's copy heads sit there; these are the top induction heads of
# scripts/measure_masking.py). Which heads does not matter for exactness; they must matter for the loss.
HEADS = [(17, 3), (17, 4), (17, 5), (18, 6), (18, 7), (20, 6), (21, 8), (22, 7), (23, 1), (23, 2), (23, 7),
         (23, 8), (24, 2), (24, 4)]
N_TOKENS = 300


@pytest.fixture(scope="module")
def real_losses(real_model):
    """Per-token losses of one 300-token window: full, uniform-masked, zero-output-masked, and the reference."""
    model, tokenizer = load_model(real_model, dtype="float32", attn_implementation="sdpa")
    ids = tokenizer(Path(bisect.__file__).read_text(encoding="utf-8"))["input_ids"][:N_TOKENS]
    assert len(ids) == N_TOKENS
    batch = torch.tensor([ids])
    with torch.no_grad():
        full, uniform = batch_losses(model, batch, HEADS, masking="uniform")
        _, zero_output = batch_losses(model, batch, HEADS, masking="zero-output")
    model.set_attn_implementation("eager")
    reference = reference_uniform_losses(model, ids, HEADS)
    return {"full": full[0], "uniform": uniform[0], "zero-output": zero_output[0], "reference": reference}


def test_uniform_masking_matches_the_eager_reference_on_the_real_model(real_losses):
    torch.testing.assert_close(real_losses["uniform"], real_losses["reference"], atol=1e-4, rtol=0)


def test_uniform_and_zero_output_masking_give_different_losses_on_the_real_model(real_losses):
    loss_full, loss_uniform, loss_zero_output = (float(real_losses[k].double().mean())
                                                 for k in ("full", "uniform", "zero-output"))
    assert loss_uniform > loss_full and loss_zero_output > loss_full  # both remove copying ability
    assert abs(loss_uniform - loss_zero_output) > 0.05 * loss_full, (loss_full, loss_uniform, loss_zero_output)
