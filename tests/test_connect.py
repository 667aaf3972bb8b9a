"""The whole pipeline on a Spark Connect session (Databricks serverless, shared clusters), against the
classic session's results: detection, scoring with bad rows and an incremental rerun, an overwrite,
selection, registration by name, and the four notebooks cell by cell (tests/connect_pipeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spark_jobs import score
from spark_jobs.cli import REPO
from tests.helpers import SAMPLE_TEXTS, write_docs, write_heads

pytestmark = pytest.mark.slow

BAD_ROWS = [("blank-1", "prose", "   "), ("null-1", "prose", None), ("empty-1", "legal", "")]
FIRST = SAMPLE_TEXTS[:6] + BAD_ROWS
APPENDED = SAMPLE_TEXTS[6:]
HEADS = [(1, 0), (0, 3)]


@pytest.fixture(scope="module")
def connect_run(spark, tmp_path_factory, fixture_model):
    """The pipeline run once through a local Connect server in its own process; its JSON result."""
    root = tmp_path_factory.mktemp("connect")
    docs = write_docs(spark, FIRST, root / "docs")
    heads = write_heads(root / "heads.json", HEADS)
    appended = root / "appended.json"
    appended.write_text(json.dumps([list(r) for r in APPENDED]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                     os.environ.get("PYTHONPATH")])))
    env.pop("SPARK_REMOTE", None)
    done = subprocess.run([sys.executable, str(REPO / "tests" / "connect_pipeline.py"),
                           "--root", str(root), "--docs", docs, "--heads", heads, "--model", fixture_model,
                           "--appended", str(appended)], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[max(0, done.stderr.rfind("Traceback")):][:6000]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr, root, heads


def classic_scores(spark, tmp_path, fixture_model, heads):
    """The same documents scored on the suite's classic session."""
    docs = write_docs(spark, FIRST + APPENDED, tmp_path / "docs")
    output = str(tmp_path / "scored")
    score.run(spark, score.options(input=docs, output=output, model=fixture_model, heads=heads))
    columns = ["id", "status", "n_tokens", "loss_full", "loss_masked", "attention_influence", "scorer"]
    return {r[0]: list(r) for r in spark.read.format("delta").load(output).select(*columns).collect()}


def test_scoring_on_connect_equals_classic_each_id_once(connect_run, spark, tmp_path, fixture_model):
    result, log, _, heads = connect_run
    assert result["session"].startswith("pyspark.sql.connect")
    first, second, overwrite = result["runs"]
    assert first["documents"] == len(FIRST) and first["by_status"] == {"ok": 6, "empty": 3}
    assert second["committed_before"] == len(FIRST) and second["documents"] == len(APPENDED)  # incremental
    assert overwrite["documents"] == len(FIRST + APPENDED)
    assert "Spark Connect: " in log and "slices read a few files each" in log  # not the whole input each
    assert "about " in log and " tasks" in log  # the progress line, from the session's progress handler

    expected = classic_scores(spark, tmp_path, fixture_model, heads)
    for table in ("scored", "scored_overwrite"):
        ids = [row[0] for row in result[table]]
        assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids)), table
        for row in result[table]:
            want = expected[row[0]]
            assert row[1:3] == want[1:3] and row[6] == want[6], (table, row, want)  # status, tokens, scorer
            for got, classic in zip(row[3:6], want[3:6]):
                assert (got is None and classic is None) or got == pytest.approx(classic, abs=1e-6), (table, row)
    assert result["state_left"] == []  # the overwrite's staging table and checkpoint are gone


def test_selection_registration_and_notebooks_on_connect(connect_run, spark):
    import math

    result, _, root, _ = connect_run
    scored = spark.read.format("delta").load(str(root / "scored"))
    ok = dict(scored.where("status = 'ok'").groupBy("domain").count().collect())
    selected = spark.read.format("delta").load(str(root / "selected"))
    assert dict(selected.groupBy("domain").count().collect()) == {d: math.ceil(0.5 * n) for d, n in ok.items()}
    assert result["selected"] == sorted(r[0] for r in selected.select("id").collect())
    assert result["registered_selected"] == selected.count()
    assert result["head_score_rows"] > 0 and result["detected_heads"]

    assert list(result["notebook_cells"]) == ["01_detect_heads.py", "02_score.py", "03_select.py", "04_analyse.py"]
    assert all(cells >= 2 for cells in result["notebook_cells"].values())
    assert result["notebook_displayed"] >= 7 and result["notebook_analysis"]
    notebook_scored = spark.read.format("delta").load(str(root / "notebooks" / "scored"))
    assert result["notebook_scored"] == notebook_scored.count() == 3 * 6
    notebook_ok = dict(notebook_scored.where("status = 'ok'").groupBy("domain").count().collect())
    assert result["notebook_selected"] == {d: math.ceil(0.5 * n) for d, n in notebook_ok.items()}
