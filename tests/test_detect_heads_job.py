"""spark_jobs/detect_heads.py through its real entry point on the fixture model."""

from __future__ import annotations

import json
import math

import pytest

from spark_jobs import detect_heads
from tests.helpers import run_job

pytestmark = pytest.mark.slow


def test_detect_heads_writes_table_json_and_heatmap_and_its_heads_matter(spark, tmp_path, fixture_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_fixture_model import masking_increases

    heads_out = tmp_path / "heads.json"
    code, _ = run_job(detect_heads, ["--model", fixture_model, "--output", tmp_path / "head_scores",
                                     "--heads-out", heads_out, "--samples", 32, "--context-tokens", 512])
    assert code == 0
    document = json.loads(heads_out.read_text())
    assert set(document) == {"model", "model_revision", "top_fraction", "heads", "scores"}
    assert (tmp_path / "heads.png").stat().st_size > 1000

    table = spark.read.format("delta").load(str(tmp_path / "head_scores"))
    assert {f.name: f.dataType.simpleString() for f in table.schema.fields} == {
        "layer": "int", "head": "int", "retrieval_score": "double", "rank": "int", "selected": "boolean",
        "model": "string", "detected_at": "timestamp"}
    model = AutoModelForCausalLM.from_pretrained(fixture_model).eval()
    n_heads = model.config.num_hidden_layers * model.config.num_attention_heads
    assert table.count() == n_heads == len(document["scores"])
    selected = sorted((r["layer"], r["head"]) for r in table.where("selected").collect())
    heads = [tuple(h) for h in document["heads"]]
    assert selected == heads and len(heads) == math.ceil(0.05 * n_heads)
    assert [r["rank"] for r in table.orderBy("rank").collect()] == list(range(1, n_heads + 1))

    increase, random_mean = masking_increases(model, AutoTokenizer.from_pretrained(fixture_model), heads)
    assert increase > 0 and increase >= 5 * random_mean, (increase, random_mean)
