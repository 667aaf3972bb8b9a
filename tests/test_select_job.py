"""spark_jobs/select.py through its real entry point on hand-made scored tables."""

from __future__ import annotations

import math

import pytest

from spark_jobs import select
from tests.helpers import run_job

pytestmark = pytest.mark.slow

SCORED_DDL = "id STRING, domain STRING, n_tokens INT, attention_influence DOUBLE, status STRING"


def scored_rows():
    """Domain a: 10 ok rows with a three-way tie at the top; b: 5 ok rows; bad rows with high scores."""
    rows = [("a-%02d" % i, "a", 100, 0.5 - 0.01 * i, "ok") for i in range(3, 10)]
    rows += [("a-02", "a", 100, 0.9, "ok"), ("a-00", "a", 100, 0.9, "ok"), ("a-01", "a", 100, 0.9, "ok")]
    rows += [("b-%d" % i, "b", 50 * (i + 1), 0.1 * i, "ok") for i in range(5)]
    rows += [("a-bad", "a", 100, None, "error"), ("b-empty", "b", 0, None, "empty"),
             ("a-weird", "a", 100, 5.0, "error")]
    return rows


@pytest.fixture()
def scored(spark, tmp_path):
    path = str(tmp_path / "scored")
    spark.createDataFrame(scored_rows(), SCORED_DDL).write.format("delta").save(path)
    return path


def selected(spark, path):
    return spark.read.format("delta").load(path).orderBy("domain", "rank_in_domain").collect()


def test_top_fraction_per_domain_with_ties_broken_by_id(spark, scored, tmp_path):
    output = str(tmp_path / "selected")
    assert run_job(select, ["--input", scored, "--output", output, "--fraction", 0.2])[0] == 0
    rows = selected(spark, output)
    by_domain = {d: [r for r in rows if r["domain"] == d] for d in ("a", "b")}
    assert len(by_domain["a"]) == math.ceil(0.2 * 10) and len(by_domain["b"]) == math.ceil(0.2 * 5)
    assert [r["id"] for r in by_domain["a"]] == ["a-00", "a-01"]  # three-way tie at 0.9: by id
    assert [r["rank_in_domain"] for r in by_domain["a"]] == [1, 2]
    assert [r["id"] for r in by_domain["b"]] == ["b-4"]
    assert by_domain["a"][0]["percentile_in_domain"] == pytest.approx(1.0)
    assert by_domain["a"][1]["percentile_in_domain"] == pytest.approx(1 - 1 / 9)
    assert all(r["status"] == "ok" for r in rows)

    # rerun: identical table
    assert run_job(select, ["--input", scored, "--output", output, "--fraction", 0.2])[0] == 0
    assert selected(spark, output) == rows


def test_global_ranking_and_min_tokens(spark, scored, tmp_path):
    output = str(tmp_path / "selected")
    assert run_job(select, ["--input", scored, "--output", output, "--fraction", 0.5, "--global",
                            "--min-tokens", 100])[0] == 0
    rows = selected(spark, output)
    candidates = [r for r in scored_rows() if r[4] == "ok" and r[2] >= 100]
    assert len(rows) == math.ceil(0.5 * len(candidates))
    assert sorted(r["rank_in_domain"] for r in rows) == list(range(1, len(rows) + 1))
    assert all(r["n_tokens"] >= 100 for r in rows)


def test_token_budget_keeps_each_domain_share(spark, scored, tmp_path):
    output = str(tmp_path / "selected")
    assert run_job(select, ["--input", scored, "--output", output, "--token-budget", 500])[0] == 0
    rows = selected(spark, output)
    # candidate tokens: a = 1000, b = 750 -> budgets 500*1000/1750 = 285.7 and 214.3
    a_ids = [r["id"] for r in rows if r["domain"] == "a"]
    b_ids = [r["id"] for r in rows if r["domain"] == "b"]
    assert a_ids == ["a-00", "a-01"]
    assert b_ids == []  # b's best document alone holds 250 tokens > 214.3
    assert sum(r["n_tokens"] for r in rows) <= 500


def test_not_a_scored_table_is_refused(spark, tmp_path, capsys):
    path = str(tmp_path / "plain")
    spark.createDataFrame([("x", "a")], "id STRING, domain STRING").write.format("delta").save(path)
    code, out = run_job(select, ["--input", path, "--output", tmp_path / "sel"], capsys)
    assert code == 2 and "not a scored table" in out.err.strip().splitlines()[-1]
    assert not (tmp_path / "sel").exists()


def test_sql_text_is_in_the_repository_and_parameterised():
    text = select.SELECT_TOP_SQL.read_text()
    for name in ("by_domain", "use_budget", "fraction", "token_budget", "min_tokens"):
        assert f":{name}" in text
