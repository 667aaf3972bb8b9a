"""spark_jobs/detect_heads.py through its real entry point: the fixture model (fast) and SmolLM2 (real)."""

from __future__ import annotations

import json
import math

import pytest

from spark_jobs import detect_heads
from tests.helpers import copy_gain_removed, run_job

pytestmark = pytest.mark.slow

# On this branch only "zero-output" masking exists; the job's default is the paper's "uniform".
MASKING = "zero-output"
ACCURACY_KEYS = {"accuracy_full", "accuracy_masked", "accuracy_random_masked", "accuracy_random_masked_draws"}
TASK_KEYS = {"samples", "context_tokens", "masking", "decoding", "seed"}


@pytest.fixture(scope="module")
def fixture_detection(spark, tmp_path_factory, fixture_model):
    out = tmp_path_factory.mktemp("detect")
    code, _ = run_job(detect_heads, ["--model", fixture_model, "--output", out / "head_scores",
                                     "--heads-out", out / "heads.json", "--samples", 4, "--context-tokens", 640,
                                     "--masking", MASKING])
    assert code == 0
    return out


def test_detect_heads_writes_table_json_and_heatmap(spark, fixture_detection, fixture_model):
    from transformers import AutoConfig

    document = json.loads((fixture_detection / "heads.json").read_text())
    assert set(document) == {"model", "model_revision", "top_fraction", "heads", "scores"} | ACCURACY_KEYS | TASK_KEYS
    assert (document["samples"], document["context_tokens"], document["masking"]) == (4, 640, MASKING)
    assert len(document["accuracy_random_masked_draws"]) == 5
    assert document["accuracy_random_masked"] == pytest.approx(sum(document["accuracy_random_masked_draws"]) / 5)
    assert all(0 <= document[k] <= 1 for k in ("accuracy_full", "accuracy_masked", "accuracy_random_masked"))
    assert (fixture_detection / "heads.png").stat().st_size > 1000

    table = spark.read.format("delta").load(str(fixture_detection / "head_scores"))
    assert {f.name: f.dataType.simpleString() for f in table.schema.fields} == {
        "layer": "int", "head": "int", "retrieval_score": "double", "rank": "int", "selected": "boolean",
        "model": "string", "detected_at": "timestamp"}
    config = AutoConfig.from_pretrained(fixture_model)
    n_heads = config.num_hidden_layers * config.num_attention_heads
    assert table.count() == n_heads == len(document["scores"])
    selected = sorted((r["layer"], r["head"]) for r in table.where("selected").collect())
    heads = [tuple(h) for h in document["heads"]]
    assert selected == heads and len(heads) == math.ceil(0.05 * n_heads)
    ranked = table.orderBy("rank").collect()
    assert [r["rank"] for r in ranked] == list(range(1, n_heads + 1))
    assert [r["selected"] for r in ranked] == [True] * len(heads) + [False] * (n_heads - len(heads))
    assert [r["retrieval_score"] for r in ranked] == sorted(document["scores"].values(), reverse=True)


def test_the_table_ranking_is_the_order_heads_are_selected_in():
    """Ties in score go to the lower (layer, head), in the table's rank as in select_heads."""
    import numpy as np

    from attention_influence.retrieval import head_ranking, select_heads

    scores = np.array([[0.1, 0.9, 0.5], [0.9, 0.5, 0.0]])
    ranking = head_ranking(scores)
    assert ranking == [(0, 1), (1, 0), (0, 2), (1, 1), (0, 0), (1, 2)]
    for top_fraction in (0.1, 0.34, 0.5, 0.67, 1.0):
        heads = select_heads(scores, top_fraction)
        assert sorted(ranking[:len(heads)]) == heads


def test_a_too_short_context_is_a_user_error_naming_the_flag(tmp_path, fixture_model, capsys):
    code, captured = run_job(detect_heads, ["--model", fixture_model, "--output", tmp_path / "t",
                                            "--heads-out", tmp_path / "h.json", "--samples", 1,
                                            "--context-tokens", 100], capsys)
    assert code == 2 and "--context-tokens" in captured.err and "too short" in captured.err


def test_detected_heads_of_the_real_model_carry_its_copying(spark, tmp_path, real_model):
    """SmolLM2: masking the heads found on a few short samples removes far more of the model's copy gain on
    repeated random tokens than masking as many random heads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    heads_out = tmp_path / "heads.json"
    code, _ = run_job(detect_heads, ["--model", real_model, "--output", tmp_path / "head_scores",
                                     "--heads-out", heads_out, "--samples", 4, "--context-tokens", 512,
                                     "--masking", MASKING])
    assert code == 0
    heads = [tuple(h) for h in json.loads(heads_out.read_text())["heads"]]
    model = AutoModelForCausalLM.from_pretrained(real_model).eval()
    selected, random_mean = copy_gain_removed(model, AutoTokenizer.from_pretrained(real_model), heads, MASKING)
    assert selected > 0.5 and selected > 2 * random_mean, (selected, random_mean)
