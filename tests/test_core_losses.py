"""Core scorer against independent references: a plain transformers forward with a test-owned pre-hook
(zero-output masking) or with the test-owned uniform attention of tests/masking_reference.py."""

import random

import pytest
import torch
import torch.nn.functional as F

from attention_influence import kernels
from attention_influence.losses import Scorer, batch_losses
from attention_influence.windows import padding_waste, plan_batches, split_windows
from attention_influence.masking import UnsupportedArchitectureError, mask_heads, validate_heads
from tests.masking_reference import reference_uniform_losses
from tests.tiny_models import CONFIGS, VOCAB, CharTokenizer, attention_implementations, tiny_model

HEADS = [(0, 1), (1, 3), (2, 0)]
PROJECTION = {"gpt2": lambda layer: layer.attn.c_proj, "gpt_neox": lambda layer: layer.attention.dense}


def reference_losses(model, ids: list[int], heads) -> torch.Tensor:
    """Per-token losses of one window from model(...).logits, heads zeroed by hooks written here."""
    family = model.config.model_type
    layers = model.transformer.h if family == "gpt2" else model.base_model.layers
    n_heads = model.config.num_attention_heads
    handles = []
    for layer_index, head in heads:
        layer = layers[layer_index]
        proj = PROJECTION.get(family, lambda l: l.self_attn.o_proj)(layer)

        def zero_head(_module, args, head=head):
            x = args[0].clone()
            width = x.shape[-1] // n_heads
            x[..., head * width:(head + 1) * width] = 0
            return (x,)
        handles.append(proj.register_forward_pre_hook(zero_head))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    finally:
        for h in handles:
            h.remove()
    return F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="none")


def random_docs(n: int, seed: int = 0, max_len: int = 90) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, VOCAB) for _ in range(rng.randint(2, max_len))] for _ in range(n)]


def reference(model, ids: list[int], heads, masking: str) -> torch.Tensor:
    """The test-owned reference of either masking mode (uniform needs an eager model)."""
    if masking == "uniform":
        return reference_uniform_losses(model, ids, heads)
    return reference_losses(model, ids, heads)


@pytest.mark.parametrize("family,attn", [(f, a) for f in sorted(CONFIGS) for a in attention_implementations(f)])
def test_zero_output_masked_and_full_losses_match_reference(family, attn):
    model = tiny_model(family, attn)
    docs = random_docs(5, seed=1)
    length = max(len(d) for d in docs)
    batch = torch.zeros(len(docs), length, dtype=torch.long)
    for row, doc in enumerate(docs):
        batch[row, :len(doc)] = torch.tensor(doc)
    for fused in (False, True):
        with torch.no_grad():
            full, masked = batch_losses(model, batch, HEADS, fused=fused, masking="zero-output")
        for row, doc in enumerate(docs):
            n = len(doc) - 1
            torch.testing.assert_close(full[row, :n], reference_losses(model, doc, []), atol=1e-5, rtol=0)
            torch.testing.assert_close(masked[row, :n], reference_losses(model, doc, HEADS), atol=1e-5, rtol=0)
    # masking must actually change something
    assert not torch.allclose(full, masked)


@pytest.mark.parametrize("masking", ["uniform", "zero-output"])
def test_masking_only_some_rows_leaves_the_others_untouched(masking):
    model = tiny_model("llama")
    ids = torch.tensor(random_docs(1, seed=2, max_len=40)[0][:40]).unsqueeze(0).repeat(2, 1)
    with torch.no_grad(), mask_heads(model, HEADS, masked_rows=torch.tensor([False, True]), mode=masking):
        logits = model(input_ids=ids).logits
    with torch.no_grad():
        plain = model(input_ids=ids[:1]).logits
    torch.testing.assert_close(logits[:1], plain, atol=1e-5, rtol=0)
    assert not torch.allclose(logits[0], logits[1])


def test_split_windows_by_hand():
    assert split_windows([1, 2, 3, 4, 5, 6, 7], 3) == [[1, 2, 3], [4, 5, 6], [7]]
    assert split_windows([1, 2], 4) == [[1, 2]]
    with pytest.raises(ValueError):
        split_windows([1, 2], 1)


@pytest.mark.parametrize("masking", ["uniform", "zero-output"])
def test_windowing_matches_hand_computed_mean(masking):
    """7 tokens, windows of 3: [t0 t1 t2] [t3 t4 t5] [t6] -> predicted t1,t2,t4,t5 (t6 starts a window)."""
    model = tiny_model("llama", "eager")
    tokenizer = CharTokenizer()
    text = "abcdef"  # BOS + 6 chars = 7 tokens
    ids = tokenizer(text)["input_ids"]
    expected = torch.cat([reference(model, ids[0:3], HEADS, masking), reference(model, ids[3:6], HEADS, masking)])
    expected_full = torch.cat([reference_losses(model, ids[0:3], []), reference_losses(model, ids[3:6], [])])
    [doc] = Scorer(model, tokenizer, HEADS, max_seq_len=3, token_losses=True, masking=masking).score([text])
    assert doc.n_tokens == 7
    assert len(doc.token_loss_masked) == 4
    assert doc.loss_masked == pytest.approx(float(expected.double().mean()), abs=1e-6)
    assert doc.loss_full == pytest.approx(float(expected_full.double().mean()), abs=1e-6)
    assert doc.attention_influence == pytest.approx((doc.loss_masked - doc.loss_full) / doc.loss_full)


@pytest.mark.parametrize("family,masking", [("llama", "uniform"), ("gpt2", "uniform"), ("gpt_neox", "uniform"),
                                            ("llama", "zero-output"), ("gpt2", "zero-output")])
def test_scores_do_not_depend_on_batching_order_or_fusion(family, masking):
    model = tiny_model(family)
    tokenizer = CharTokenizer()
    rng = random.Random(3)
    texts = ["".join(rng.choice("abcdefghij klmnop") for _ in range(rng.randint(1, 150))) for _ in range(12)]
    baseline = Scorer(model, tokenizer, HEADS, max_seq_len=32, batch_tokens=32, fused=False,
                      masking=masking).score(texts)
    for batch_tokens, fused in [(64, True), (500, True), (10_000, False), (10_000, True)]:
        order = list(range(len(texts)))
        rng.shuffle(order)
        shuffled = Scorer(model, tokenizer, HEADS, max_seq_len=32, batch_tokens=batch_tokens,
                          fused=fused, masking=masking).score([texts[i] for i in order])
        for position, i in enumerate(order):
            assert shuffled[position].n_tokens == baseline[i].n_tokens
            assert shuffled[position].loss_full == pytest.approx(baseline[i].loss_full, abs=1e-5)
            assert shuffled[position].loss_masked == pytest.approx(baseline[i].loss_masked, abs=1e-5)


def test_bad_documents_get_a_status_and_do_not_disturb_others():
    model = tiny_model("llama")
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16, max_chars=100)
    docs = scorer.score([None, "   ", "", "ok text", b"\xff\xfe", "x" * 101, 42, float("nan"), "a"])
    assert [d.status for d in docs] == ["empty", "empty", "empty", "ok", "error", "error", "error", "empty", "ok"]
    assert "undecodable" in docs[4].error and "oversized" in docs[5].error
    # "a" is BOS + 1 char = 2 tokens: one predicted token, scorable
    alone = scorer.score(["ok text"])[0]
    assert docs[3].loss_full == pytest.approx(alone.loss_full, abs=1e-6)


def test_plan_batches_respects_budget_and_covers_everything():
    lengths = [5, 100, 30, 30, 7, 64, 2]
    batches = plan_batches(lengths, batch_tokens=128)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 128
    assert 0 <= padding_waste(lengths, batches) < 0.5


def test_heads_out_of_range_are_refused():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="out of range"):
        validate_heads(model, [(3, 0)])
    with pytest.raises(ValueError, match="out of range"):
        validate_heads(model, [(0, 4)])


def test_heads_are_checked_once_at_the_scorers_edge(monkeypatch):
    """Scorer and mask_heads refuse bad heads; scoring many batches does not check them again."""
    import attention_influence.masking as masking

    model = tiny_model("llama")
    with pytest.raises(ValueError, match="out of range"):
        Scorer(model, CharTokenizer(), [(3, 0)], max_seq_len=16)
    with pytest.raises(ValueError, match="out of range"), mask_heads(model, [(0, 4)]):
        pass
    scorer = Scorer(model, CharTokenizer(), HEADS, max_seq_len=16, batch_tokens=32)
    calls = []
    # Every check of heads in the core goes through masking.validate_heads (via checked_heads).
    monkeypatch.setattr(masking, "validate_heads", lambda *a: calls.append(a) or validate_heads(*a))
    scorer.score(["abcdefgh " * 20, "ijkl " * 30])
    assert scorer.stats["padded_tokens"] > 32 and calls == []


def test_unsupported_architecture_is_named():
    from transformers import BertConfig, BertLMHeadModel
    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, is_decoder=True))
    with pytest.raises(UnsupportedArchitectureError, match="'bert'"):
        validate_heads(model, [(0, 0)])


@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("cross_entropy", ["_vocab_blocked_losses", "_row_sliced_losses"])
def test_both_cross_entropy_paths_match_a_float64_reference(cross_entropy, softcap):
    """The CPU path (vocabulary blocks, running log-sum-exp) and the GPU path (row slices), against a
    plain float64 cross-entropy: 4 blocks of 256 with a partial last one, targets at block edges, and
    a token budget that cuts the rows into slices."""
    torch.manual_seed(0)
    head = torch.nn.Linear(4096, 1000, bias=True)
    assert kernels.vocab_block_size(4096, 1000) == 256
    hidden = torch.randn(3, 7, 4096)
    targets = torch.randint(0, 1000, (3, 7))
    targets[0, :5] = torch.tensor([0, 255, 256, 768, 999])
    logits = F.linear(hidden.double(), head.weight.double(), head.bias.double())
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = F.cross_entropy(logits.reshape(-1, 1000), targets.reshape(-1), reduction="none").view(3, 7)
    with torch.inference_mode():
        got = getattr(kernels, cross_entropy)(head, softcap, hidden, targets, 256 * 5)
    assert got.dtype == torch.float32 and got.shape == (3, 7)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_vocab_blocks_are_cache_sized_multiples_of_256():
    assert kernels.vocab_block_size(576, 49152) == 1792  # SmolLM2: 4 MiB of weight, rounded down
    assert kernels.vocab_block_size(64, 2048) == 2048  # a tiny vocabulary is one block
    assert kernels.vocab_block_size(8192, 155136) == 256


def test_a_target_outside_the_vocabulary_is_an_error_not_a_zero_logit():
    head = torch.nn.Linear(16, 300, bias=False)
    with torch.inference_mode(), pytest.raises(IndexError, match="vocabulary of 300"):
        kernels._vocab_blocked_losses(head, None, torch.randn(1, 2, 16), torch.tensor([[1, 300]]), 1 << 20)
