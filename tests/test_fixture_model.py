"""The committed tiny-llama fixture really copies, and its retrieval heads carry the copying."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attention_influence.masking import mask_heads
from attention_influence.retrieval import retrieval_scores, select_heads
from attention_influence.retrieval_task import build_samples
from tests.helpers import SEG_LEN, repeated_sequences

# TINY_LLAMA_FIXTURE points the tests at another build (e.g. a candidate before committing it).
FIXTURE = Path(os.environ.get("TINY_LLAMA_FIXTURE") or Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama")
CONTEXT_TOKENS = 640  # the fixture's training rows (demo.fixture.FixtureRecipe.seq_len); 3 shots need about 450 tokens


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (FIXTURE / "model.safetensors").exists(), f"fixture missing: make fixture (or {FIXTURE})"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    model = AutoModelForCausalLM.from_pretrained(FIXTURE, attn_implementation="eager", dtype=torch.float32)
    return model.eval(), tokenizer


@torch.inference_mode()
def second_copy_loss(model, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids).logits.float()
    pred = logits[:, SEG_LEN:-1]  # positions whose next token lies in the second copy
    target = ids[:, SEG_LEN + 1:]
    return float(F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)))


def test_tokenizer_prepends_bos_and_round_trips(loaded):
    _, tokenizer = loaded
    ids = tokenizer("def f(x):\n    return x")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.decode(ids, skip_special_tokens=True) == "def f(x):\n    return x"


def test_config_is_small_llama(loaded):
    model, tokenizer = loaded
    assert model.config.model_type == "llama"
    assert model.config.max_position_embeddings >= 1024
    assert model.config.vocab_size == len(tokenizer)
    size = sum(p.stat().st_size for p in FIXTURE.iterdir() if p.is_file())
    assert size < 3_000_000, f"{size:,} bytes: the fixture must stay under 3 MB"


def test_copies_repeated_random_tokens(loaded):
    model, tokenizer = loaded
    vocab = model.config.vocab_size
    loss = second_copy_loss(model, repeated_sequences(tokenizer, vocab))
    assert loss < 0.5 * math.log(vocab), f"second-copy loss {loss:.3f} vs 0.5 ln(V) = {0.5 * math.log(vocab):.3f}"


def test_retrieval_heads_carry_copying(loaded):
    """Detection on the paper's task (the fixture is trained on it) finds the head whose masking removes
    the copying: far more than masking as many random other heads."""
    model, tokenizer = loaded
    samples = build_samples(tokenizer, 20, context_tokens=CONTEXT_TOKENS, seed=0)
    scores = retrieval_scores(model, tokenizer, samples)
    accuracy = scores.copied_tokens / scores.answer_tokens
    assert accuracy > 0.1, f"teacher-forced accuracy on value tokens {accuracy:.3f}"

    heads = select_heads(scores.scores, 0.05)
    selected, random_mean = masking_increases(model, tokenizer, heads)
    assert selected > 0
    assert selected >= 5 * random_mean, (
        f"masking {heads} raised the loss by {selected:.3f}, random heads by {random_mean:.3f} on average")


def masking_increases(model, tokenizer, heads, draws: int = 20, mode: str = "zero-output") -> tuple[float, float]:
    """Second-copy loss increase from masking `heads`, and the mean from as many random other heads.
    zero-output by default: the fixture was trained with heads dropped that way."""
    ids = repeated_sequences(tokenizer, model.config.vocab_size)
    base = second_copy_loss(model, ids)
    with mask_heads(model, heads, mode=mode):
        selected = second_copy_loss(model, ids) - base
    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in heads]
    rng = random.Random(0)
    increases = []
    for _ in range(draws):
        with mask_heads(model, rng.sample(others, len(heads)), mode=mode):
            increases.append(second_copy_loss(model, ids) - base)
    return selected, sum(increases) / len(increases)
