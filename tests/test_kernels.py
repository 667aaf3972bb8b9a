"""The LM-head and attention kernels a scorer can choose (issue 18 §2) score what the default does.

Each is compared with a plain transformers forward (logits, then F.cross_entropy in float32), not
only with the scorer's own default path; the GPU speeds are benchmarks/gpu.sh's business.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from attention_influence.kernels import LOSS_KERNELS, _token_losses
from attention_influence.losses import Scorer
from tests.tiny_models import CharTokenizer, tiny_model

HEADS = [(1, 0), (2, 3)]


def texts(n=8, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefgh ij") for _ in range(rng.randint(5, 90))) for _ in range(n)]


def plain_mean_loss(model, tokenizer, text) -> float:
    """Mean next-token loss of the unmasked model: one plain forward, float32 cross-entropy."""
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits.float()
    return float(F.cross_entropy(logits[0, :-1], ids[0, 1:]))


@pytest.mark.parametrize("kernel", LOSS_KERNELS)
def test_every_loss_kernel_gives_the_plain_forward_loss_and_the_same_scores(kernel):
    model, tokenizer = tiny_model("llama"), CharTokenizer()
    # one window per text (at most 91 tokens), so a document's loss is one plain forward's mean
    default = Scorer(model, tokenizer, HEADS, max_seq_len=128).score(texts())
    got = Scorer(model, tokenizer, HEADS, max_seq_len=128, loss_kernel=kernel).score(texts())
    for text, a, b in zip(texts(), got, default):
        assert a.loss_full == pytest.approx(plain_mean_loss(model, tokenizer, text), abs=1e-5)
        assert a.loss_masked == pytest.approx(b.loss_masked, abs=1e-5)
        assert a.attention_influence == pytest.approx(b.attention_influence, abs=1e-5)
    assert max(abs(d.loss_masked - d.loss_full) for d in default) > 1e-6  # the masking is visible


def test_builtin_linear_cross_entropy_on_bfloat16_stays_close_to_a_float32_reference():
    """bfloat16 hidden states and head: per-token losses come back rounded to bfloat16, their mean
    within 1e-3 (relative) of float32 arithmetic on the same bfloat16 values."""
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 3000, bias=False).to(torch.bfloat16).requires_grad_(False)
    model = type("M", (), {"get_output_embeddings": lambda self: head,
                           "config": type("C", (), {})()})()
    hidden = torch.randn(3, 50, 64).to(torch.bfloat16)
    targets = torch.randint(0, 3000, (3, 50))
    reference = F.cross_entropy((hidden.float() @ head.weight.float().T).reshape(-1, 3000), targets.reshape(-1),
                                reduction="none").view(3, 50)
    for kernel in ("linear_cross_entropy", "row_slices", "vocab_blocks"):
        got = _token_losses(model, hidden, targets, kernel=kernel)
        assert got.dtype == torch.float32 and got.shape == (3, 50)
        assert float((got.mean() - reference.mean()).abs() / reference.mean()) < 1e-3, kernel
        assert float((got - reference).abs().max()) < 0.1, kernel


def test_loss_kernel_errors_name_the_choice():
    model, tokenizer = tiny_model("llama"), CharTokenizer()
    with pytest.raises(ValueError, match="loss_kernel must be one of auto, row_slices"):
        Scorer(model, tokenizer, HEADS, max_seq_len=64, loss_kernel="fast")
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="softcapping"):
        Scorer(model, tokenizer, HEADS, max_seq_len=64, loss_kernel="linear_cross_entropy")
    Scorer(model, tokenizer, HEADS, max_seq_len=64, loss_kernel="vocab_blocks")  # applies the softcap itself


@pytest.mark.parametrize("backends", [("math",), ("flash", "math"), ("efficient", "math")])
def test_attention_backends_that_run_here_give_the_default_scores(backends):
    """On a CPU: the math kernel, and the flash / memory-efficient choices where torch has them
    (with math as the fallback, as a user on a GPU would list cuDNN before flash)."""
    model, tokenizer = tiny_model("llama"), CharTokenizer()
    default = Scorer(model, tokenizer, HEADS, max_seq_len=64).score(texts())
    got = Scorer(model, tokenizer, HEADS, max_seq_len=64, attention_backends=backends).score(texts())
    for a, b in zip(got, default):
        assert a.status == "ok"
        assert a.loss_full == pytest.approx(b.loss_full, abs=1e-5)
        assert a.loss_masked == pytest.approx(b.loss_masked, abs=1e-5)


def test_attention_backends_check_their_names_and_the_attention_implementation():
    tokenizer = CharTokenizer()
    with pytest.raises(ValueError, match="unknown 'fastest'; choose from cudnn, flash"):
        Scorer(tiny_model("llama"), tokenizer, HEADS, max_seq_len=64, attention_backends=("fastest",))
    with pytest.raises(ValueError, match="runs 'eager' attention"):
        Scorer(tiny_model("llama", attn_implementation="eager"), tokenizer, HEADS, max_seq_len=64,
               attention_backends=("flash",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the cuDNN kernel may run")
def test_a_backend_that_cannot_run_here_stops_the_run_and_names_the_choice():
    """cuDNN attention on a CPU: torch finds no kernel for any batch, so the run stops with one error
    that names the setting (not every document marked failed)."""
    scorer = Scorer(tiny_model("llama"), CharTokenizer(), HEADS, max_seq_len=64, attention_backends=("cudnn",))
    with pytest.raises(ValueError, match=r"attention_backends cudnn: none of them can run this batch on cpu"):
        scorer.score(texts(2))
