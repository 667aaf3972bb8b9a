"""Retrieval-head detection: the paper's task, the per-sample retrieval score, the task accuracies."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from attention_influence.retrieval import (DECODINGS, heads_document, load_heads, masking_accuracies, retrieval_scores,
                                           select_heads)
from attention_influence.retrieval_task import (MAX_VALUE_TOKENS, N_SHOTS, build_samples, encode_sample,
                                                prose_sentences, split_sentences)
from tests.conftest import FIXTURE_MODEL

PLANTED = (1, 2)
CONTEXT = 900  # the fixture's tokenizer splits random alphanumeric keys into ~25 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(FIXTURE_MODEL)


@pytest.fixture(scope="module")
def samples(tokenizer):
    return build_samples(tokenizer, 6, context_tokens=CONTEXT, seed=3)


def parse(prompt: str):
    """(the JSON object, the solved shots as (key, value), the open key) of a prompt, read back independently."""
    lines = prompt.split("\n")
    assert lines[0].startswith("Extract the value") and "only the value" in lines[0]
    pairs = json.loads(lines[1])
    shots = [re.fullmatch(r'"(\w+)": "(.*)"', line).groups() for line in lines[2:-1]]
    open_key = re.fullmatch(r'"(\w+)": "', lines[-1]).group(1)
    return pairs, shots, open_key


def test_split_sentences_keeps_plain_prose_only():
    doc = ("Return the ceiling of self, as an integer. For a finite Decimal instance self, return n.\n\n"
           "    >>> ceil(x)\n    2\n\nUse os.path.join() to build it.  See \"quotes\" here. Short one.")
    assert split_sentences(doc) == ["Return the ceiling of self, as an integer.",
                                    "For a finite Decimal instance self, return n."]


def test_task_layout_keys_values_shots(tokenizer, samples):
    sentences = set(prose_sentences())
    for sample in samples:
        pairs, shots, open_key = parse(sample.prompt)
        assert all(re.fullmatch(r"[A-Za-z0-9]{32}", key) for key in pairs)
        assert all(value in sentences for value in pairs.values())  # real text from the corpus
        assert all(len(tokenizer(v, add_special_tokens=False)["input_ids"]) <= MAX_VALUE_TOKENS for v in pairs.values())
        assert len(set(pairs.values())) == len(pairs)
        assert len(shots) == N_SHOTS and all(pairs[k] == v for k, v in shots)
        assert open_key == sample.key and open_key not in dict(shots) and pairs[open_key] == sample.value
        assert sample.prompt[sample.needle_span[0]:sample.needle_span[1]] == sample.value
        assert sample.prompt.count(sample.value) == 1  # only in the JSON object: the answer is not in the prompt


def test_prompt_and_answer_fill_the_context_without_passing_it(tokenizer, samples):
    for sample in samples:
        answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        total = len(tokenizer(sample.prompt)["input_ids"]) + len(answer)
        assert CONTEXT - 2 * (MAX_VALUE_TOKENS + 40) < total <= CONTEXT  # within about one key/value pair
    with pytest.raises(ValueError, match="context_tokens=100 is too short"):
        build_samples(tokenizer, 1, context_tokens=100, seed=0)


def test_samples_are_deterministic_given_the_seed(tokenizer, samples):
    assert build_samples(tokenizer, 6, context_tokens=CONTEXT, seed=3) == samples
    assert build_samples(tokenizer, 6, context_tokens=CONTEXT, seed=4) != samples


def test_value_tokens_are_the_answers_tokens(tokenizer, samples):
    """The span k is the value's tokens in the context, and the model writes the same tokens when it copies."""
    for sample in samples:
        ids, needle = encode_sample(tokenizer, sample)
        assert needle == list(range(needle[0], needle[-1] + 1))
        assert sample.value.startswith(tokenizer.decode([ids[i] for i in needle]))
        answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        assert answer[:len(needle)] == [ids[i] for i in needle]


class Planted:
    """A random Llama that answers every sample right and whose head PLANTED attends, at each answer step, to
    the value token being produced -- on all steps of the samples in `full`, on the first step elsewhere.
    Serves both decodings: one teacher-forced pass over prompt + answer, or a prefill then one token a step."""

    def __init__(self, tokenizer, samples, full):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, max_position_embeddings=2048)
        self.model = LlamaForCausalLM(config).eval()
        self.model.set_attn_implementation("eager")
        self.prefills, self.passes = {}, {}
        for i, sample in enumerate(samples):
            ids, needle = encode_sample(tokenizer, sample)
            planted = needle if i in full else needle[:1]
            answer = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
            self.prefills[tuple(ids[:-1])] = (planted, answer)
            self.passes[tuple(ids + answer)] = (planted, len(ids) - 1)  # answer token j is predicted at len-1+j
        self.state = {}
        self.model.register_forward_pre_hook(self.before, with_kwargs=True)
        self.model.model.layers[PLANTED[0]].self_attn.register_forward_hook(self.plant)
        self.model.register_forward_hook(self.answer)

    def before(self, _module, _args, kwargs):
        ids = tuple(kwargs["input_ids"][0].tolist())
        if ids in self.passes:
            planted, first = self.passes[ids]
            self.state = {"ids": ids, "queries": {first + j: n for j, n in enumerate(planted)}}
        elif len(ids) > 1:
            planted, answer = self.prefills[ids]
            self.state = {"answer": answer, "planted": planted, "step": -1}
        else:
            self.state["step"] += 1

    def plant(self, _module, _args, output):
        weights = output[1].clone()
        if "queries" in self.state:
            for query, key in self.state["queries"].items():
                weights[0, PLANTED[1], query] = 0
                weights[0, PLANTED[1], query, key] = 1
            return output[0], weights
        step = self.state["step"]
        if 0 <= step < len(self.state["planted"]):
            weights[0, PLANTED[1], -1] = 0
            weights[0, PLANTED[1], -1, self.state["planted"][step]] = 1
        return output[0], weights

    def answer(self, _module, _args, output):
        logits = torch.full_like(output.logits, -1e4)
        if "queries" in self.state:  # perfect next-token predictions
            ids = self.state["ids"]
            logits[0, torch.arange(len(ids) - 1), torch.tensor(ids[1:])] = 0
        elif self.state["step"] >= 0:
            answer = self.state["answer"]
            logits[0, -1, answer[min(self.state["step"], len(answer) - 1)]] = 0
        else:
            return output
        output.logits = logits
        return output


@pytest.mark.parametrize("decoding", DECODINGS)
def test_planted_copying_head_scores_one_and_is_selected(tokenizer, samples, decoding):
    planted = Planted(tokenizer, samples, full=range(len(samples)))
    result = retrieval_scores(planted.model, tokenizer, samples, decoding=decoding)
    assert result.scores.shape == (3, 4) and result.samples == len(samples)
    assert result.copied_tokens == result.answer_tokens > 0
    assert result.exact_matches == (len(samples) if decoding == "greedy" else None)
    assert result.scores[PLANTED] == pytest.approx(1.0)
    others = np.delete(result.scores.flatten(), PLANTED[0] * 4 + PLANTED[1])
    assert others.max() < 0.5
    assert select_heads(result.scores, 0.05) == [PLANTED]


@pytest.mark.parametrize("decoding", DECODINGS)
def test_score_is_the_mean_over_samples_not_pooled_over_tokens(tokenizer, samples, decoding):
    """Sample 0: the head copies every value token (1.0); sample 1: only the first (1/|k|)."""
    pair = samples[:2]
    planted = Planted(tokenizer, pair, full={0})
    result = retrieval_scores(planted.model, tokenizer, pair, decoding=decoding)
    k1 = len(encode_sample(tokenizer, pair[1])[1])
    assert result.scores[PLANTED] == pytest.approx((1.0 + 1 / k1) / 2)
    assert [s[PLANTED] for s in result.sample_scores] == pytest.approx([1.0, 1 / k1])


def test_accuracies_with_heads_masked(tokenizer, samples):
    """The planted model always answers right (its logits are forced): every accuracy is 1, five random draws."""
    planted = Planted(tokenizer, samples[:2], full={0, 1})
    acc = masking_accuracies(planted.model, tokenizer, samples[:2], [PLANTED], masking="zero-output", seed=0)
    assert acc["accuracy_full"] == acc["accuracy_masked"] == acc["accuracy_random_masked"] == 1.0
    assert len(acc["accuracy_random_masked_draws"]) == 5


def test_select_heads_counts_and_ties():
    scores = np.array([[0.1, 0.5, 0.5], [0.0, 0.9, 0.2]])
    assert select_heads(scores, 0.05) == [(1, 1)]  # ceil(0.3) = 1 head at least
    assert select_heads(scores, 0.5) == [(0, 1), (0, 2), (1, 1)]
    with pytest.raises(ValueError, match="top_fraction"):
        select_heads(scores, 0)


def test_heads_json_round_trip(tmp_path):
    scores = np.array([[0.1, 0.7], [0.3, 0.2]])
    document = heads_document("m", "rev", 0.25, [(0, 1)], scores, accuracy_full=0.5)
    assert document["scores"] == {"0.0": 0.1, "0.1": 0.7, "1.0": 0.3, "1.1": 0.2}
    assert document["accuracy_full"] == 0.5
    path = tmp_path / "heads.json"
    path.write_text(json.dumps(document))
    assert load_heads(str(path)) == [(0, 1)]
