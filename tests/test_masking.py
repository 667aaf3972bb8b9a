"""Uniform masking (the paper) against a test-owned eager attention that builds the 1/t weights itself.

Every registered family is either checked here in eager and SDPA, fused and
two-pass, or refused by name. The zero-output operator's own reference tests
are in test_core_losses.py.
"""

import pytest
import torch
import torch.nn.functional as F

from attention_influence.losses import Scorer, batch_losses
from attention_influence.masking import (FAMILIES, MASKING_MODES, QUERY_SOURCES, UnsupportedArchitectureError,
                                         mask_heads)
from tests.masking_reference import layer_window, reference_uniform_losses, uniform_reference, uniform_weights
from tests.test_core_losses import HEADS, random_docs
from tests.tiny_models import CONFIGS, SLIDING_WINDOW, CharTokenizer, attention_implementations, tiny_model

FAMILY_ATTN = [(family, attn) for family in sorted(CONFIGS) for attn in attention_implementations(family)]


def right_padded(docs: list[list[int]]) -> torch.Tensor:
    batch = torch.zeros(len(docs), max(len(d) for d in docs), dtype=torch.long)
    for row, doc in enumerate(docs):
        batch[row, :len(doc)] = torch.tensor(doc)
    return batch


def test_every_registered_family_has_a_tiny_model_and_a_query_source():
    assert set(CONFIGS) == set(FAMILIES) == set(QUERY_SOURCES)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_reference_attention_without_masked_heads_is_the_model(family):
    """The reference attention is a correct attention: with nothing masked it gives the model's logits."""
    model = tiny_model(family, "eager")
    ids = torch.tensor([random_docs(1, seed=4, max_len=40)[0]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with uniform_reference(model, []):
            reference = model(input_ids=ids).logits
    torch.testing.assert_close(reference, plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family,attn", FAMILY_ATTN)
def test_uniform_masking_matches_reference(family, attn):
    model = tiny_model(family, attn)
    reference_model = tiny_model(family, "eager")  # same seed, same weights
    docs = random_docs(4, seed=1, max_len=40)
    batch = right_padded(docs)
    expected = [reference_uniform_losses(reference_model, doc, HEADS) for doc in docs]
    for fused in (False, True):
        with torch.no_grad():
            full, masked = batch_losses(model, batch, HEADS, fused=fused, masking="uniform")
        for row, doc in enumerate(docs):
            n = len(doc) - 1
            torch.testing.assert_close(masked[row, :n], expected[row], atol=1e-5, rtol=0)
            torch.testing.assert_close(full[row, :n], reference_uniform_losses(reference_model, doc, []),
                                       atol=1e-5, rtol=0)
    with torch.no_grad():
        _, zero_output = batch_losses(model, batch, HEADS, masking="zero-output")
    assert not torch.allclose(full, masked)
    assert not torch.allclose(masked, zero_output)  # the two operators are different


@pytest.mark.parametrize("family,attn", FAMILY_ATTN)
def test_masked_rows_limit_uniform_masking_to_those_rows(family, attn):
    model = tiny_model(family, attn)
    reference_model = tiny_model(family, "eager")
    doc = random_docs(1, seed=2, max_len=30)[0]
    ids = torch.tensor([doc] * 3)
    with torch.no_grad(), mask_heads(model, HEADS, masked_rows=torch.tensor([False, True, False]), mode="uniform"):
        logits = model(input_ids=ids).logits
    with torch.no_grad():
        plain = reference_model(input_ids=ids[:1]).logits
        with uniform_reference(reference_model, HEADS):
            masked = reference_model(input_ids=ids[:1]).logits
    torch.testing.assert_close(logits[[0, 2]], plain.expand(2, -1, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1:2], masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3_text", "llama"])
def test_masked_heads_attend_with_weight_one_over_min_t_w(family):
    """Read the attention weights back from eager attention: 1/t, or 1/min(t, W) in sliding-window layers."""
    model = tiny_model(family, "eager")
    length = 3 * SLIDING_WINDOW
    ids = torch.tensor([[1] + list(range(2, length + 1))])
    with torch.no_grad(), mask_heads(model, HEADS, mode="uniform"):
        attentions = model(input_ids=ids, output_attentions=True).attentions
    windows = {layer: layer_window(model.config, layer) for layer, _ in HEADS}
    if family != "llama":
        assert SLIDING_WINDOW in windows.values()
    for layer, head in HEADS:
        torch.testing.assert_close(attentions[layer][0, head], uniform_weights(length, windows[layer]),
                                   atol=1e-6, rtol=0)


def test_uniform_scorer_matches_reference_on_a_sliding_window_model():
    """Scorer end to end (windows, batches, fused) on Mistral with a window shorter than its documents."""
    model = tiny_model("mistral", "sdpa")
    reference_model = tiny_model("mistral", "eager")
    tokenizer = CharTokenizer()
    texts = ["the quick brown fox jumps over the lazy dog", "abc" * 15, "sliding windows"]
    docs = Scorer(model, tokenizer, HEADS, max_seq_len=20, batch_tokens=40, token_losses=True).score(texts)
    for text, doc in zip(texts, docs):
        ids = tokenizer(text)["input_ids"]
        windows = [ids[i:i + 20] for i in range(0, len(ids), 20) if len(ids[i:i + 20]) >= 2]
        expected = torch.cat([reference_uniform_losses(reference_model, w, HEADS) for w in windows])
        assert doc.loss_masked == pytest.approx(float(expected.double().mean()), abs=1e-5)
        torch.testing.assert_close(torch.tensor(doc.token_loss_masked), expected, atol=1e-5, rtol=0)


def test_alibi_families_are_refused_for_uniform_masking_by_name():
    from transformers import BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM

    bloom = BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedArchitectureError, match="'bloom'.*ALiBi"):
        with mask_heads(bloom, [(0, 0)], mode="uniform"):
            pass
    falcon = FalconForCausalLM(FalconConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, alibi=True))
    with pytest.raises(UnsupportedArchitectureError, match="'falcon'.*ALiBi"):
        Scorer(falcon, CharTokenizer(), [(0, 0)], max_seq_len=8, masking="uniform")


def test_unknown_masking_mode_names_the_parameter():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"^masking must be one of 'uniform', 'zero-output', got 'zero'"):
        Scorer(model, CharTokenizer(), HEADS, max_seq_len=8, masking="zero")
    with pytest.raises(ValueError, match=r"^mode must be one of"):
        with mask_heads(model, HEADS, mode="Uniform"):
            pass
    assert MASKING_MODES == ("uniform", "zero-output")
    assert Scorer(model, CharTokenizer(), HEADS, max_seq_len=8).masking == "uniform"


def test_uniform_masking_touches_only_the_masked_layers_and_heads():
    """Hooks are gone after the block, and masking a head changes that layer's output, nothing below it."""
    model = tiny_model("llama", "eager")
    ids = torch.tensor([random_docs(1, seed=6, max_len=20)[0]])
    with torch.no_grad():
        before = model(input_ids=ids, output_hidden_states=True).hidden_states
        with mask_heads(model, [(1, 2)], mode="uniform"):
            during = model(input_ids=ids, output_hidden_states=True).hidden_states
        after = model(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in range(2):  # embeddings and layer 0 output are untouched
        torch.testing.assert_close(during[layer], before[layer], atol=0, rtol=0)
    assert not torch.allclose(during[2], before[2])
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    losses = F.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="none")
    assert torch.isfinite(losses).all()
