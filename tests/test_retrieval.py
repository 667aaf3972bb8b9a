"""Retrieval-head detection: the synthetic task and the per-head retrieval score."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from attention_influence.retrieval import (_token_positions, build_sample, build_samples, heads_document,
                                           load_heads, retrieval_scores, select_heads)
from tests.conftest import FIXTURE_MODEL

PLANTED = (1, 2)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURE_MODEL)


def test_sample_layout():
    sample = build_sample(random.Random(1), n_pairs=6, n_shots=3)
    needle = sample.text[sample.needle_span[0]:sample.needle_span[1]]
    answer = sample.text[sample.answer_span[0]:sample.answer_span[1]]
    assert needle == answer and len(needle.split()) == 6
    assert sample.text.endswith(answer + '"')
    assert sample.text.count(needle) == 2  # once in the context, once as the answer (not among the shots)


def test_samples_respect_the_context_budget(tokenizer):
    samples = build_samples(tokenizer, 5, context_tokens=300, seed=0)
    assert len(samples) == 5
    assert all(len(tokenizer(s.text)["input_ids"]) <= 300 for s in samples)
    with pytest.raises(ValueError, match="too short"):
        build_samples(tokenizer, 1, context_tokens=20, seed=0)


def planted_model(tokenizer, samples):
    """A random Llama with one planted copying head and a perfect next-token output.

    Head PLANTED attends from each answer position to the needle token the
    model is about to produce; every other head keeps its random attention.
    """
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=1024)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("eager")
    targets = {}
    for sample in samples:
        enc = tokenizer(sample.text, return_offsets_mapping=True)
        needle = _token_positions(enc["offset_mapping"], sample.needle_span)
        answer = _token_positions(enc["offset_mapping"], sample.answer_span)
        assert len(needle) == len(answer)
        targets[tuple(enc["input_ids"])] = {a - 1: n for a, n in zip(answer, needle)}
    current = {}

    def remember_ids(_module, args, kwargs):
        current["ids"] = tuple(kwargs["input_ids"][0].tolist())

    def plant(_module, _args, output):
        weights = output[1].clone()
        for query, key in targets[current["ids"]].items():
            weights[0, PLANTED[1], query] = 0
            weights[0, PLANTED[1], query, key] = 1
        return output[0], weights

    def perfect_logits(_module, _args, output):
        ids = torch.tensor(current["ids"])
        logits = torch.full_like(output.logits, -1e4)
        logits[0, torch.arange(len(ids) - 1), ids[1:]] = 0
        output.logits = logits
        return output

    model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    model.model.layers[PLANTED[0]].self_attn.register_forward_hook(plant)
    model.register_forward_hook(perfect_logits)
    return model


def test_detection_ranks_a_planted_copying_head_first(tokenizer):
    samples = build_samples(tokenizer, 6, context_tokens=400, seed=3)
    result = retrieval_scores(planted_model(tokenizer, samples), tokenizer, samples)
    assert result.scores.shape == (3, 4)
    assert result.copied_tokens == result.answer_tokens > 0
    assert result.scores[PLANTED] == pytest.approx(1.0)
    others = np.delete(result.scores.flatten(), PLANTED[0] * 4 + PLANTED[1])
    assert others.max() < 0.5
    assert select_heads(result.scores, 0.05) == [PLANTED]


def test_select_heads_counts_and_ties():
    scores = np.array([[0.1, 0.5, 0.5], [0.0, 0.9, 0.2]])
    assert select_heads(scores, 0.05) == [(1, 1)]  # ceil(0.3) = 1 head at least
    assert select_heads(scores, 0.5) == [(0, 1), (0, 2), (1, 1)]
    with pytest.raises(ValueError):
        select_heads(scores, 0)


def test_heads_json_round_trip(tmp_path):
    scores = np.array([[0.1, 0.7], [0.3, 0.2]])
    document = heads_document("m", "rev", 0.25, [(0, 1)], scores)
    assert document["scores"] == {"0.0": 0.1, "0.1": 0.7, "1.0": 0.3, "1.1": 0.2}
    path = tmp_path / "heads.json"
    import json
    path.write_text(json.dumps(document))
    assert load_heads(str(path)) == [(0, 1)]
