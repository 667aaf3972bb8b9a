"""spark_jobs/select.py through its real entry point on hand-made scored tables."""

from __future__ import annotations

import math

import pytest

from spark_jobs import select
from spark_jobs.session import CONSTANT_PARAMETERS
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


def test_quotes_and_sql_in_names_and_values_are_data(spark, tmp_path):
    """Column names from flags and domain values with quotes, backticks and SQL select like plain ones."""
    rows = [(f"it's-{i}", f"x'); DROP TABLE t; --", 10, 0.1 * i, "ok") for i in range(4)]
    rows += [(f"b`{i}", "plain", 10, 0.1 * i, "ok") for i in range(2)]
    path = str(tmp_path / "scored")
    spark.createDataFrame(rows, "`doc'id` STRING, `dom``ain` STRING, n_tokens INT, attention_influence DOUBLE, "
                                "status STRING").write.format("delta").save(path)
    output = str(tmp_path / "selected")
    select.run(spark, select.options(input=path, output=output, fraction=0.5, id_col="doc'id",
                                     domain_col="dom`ain"))
    kept = {(r["dom`ain"], r["doc'id"]) for r in spark.read.format("delta").load(output).collect()}
    assert kept == {("x'); DROP TABLE t; --", "it's-3"), ("x'); DROP TABLE t; --", "it's-2"), ("plain", "b`1")}
    assert spark.read.format("delta").load(path).count() == len(rows)  # the input is untouched


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.34, 0.5, 1.0])
def test_each_domain_keeps_the_ceiling_of_its_share(spark, scored, tmp_path, fraction):
    """Per domain: ceil(fraction x its ok documents with a score), the best first, never a bad row."""
    output = str(tmp_path / "selected")
    select.run(spark, select.options(input=scored, output=output, fraction=fraction))
    rows = selected(spark, output)
    for domain in ("a", "b"):
        candidates = sorted((r for r in scored_rows() if r[1] == domain and r[4] == "ok"),
                            key=lambda r: (-r[3], r[0]))
        expected = [r[0] for r in candidates[:math.ceil(fraction * len(candidates))]]
        assert [r["id"] for r in rows if r["domain"] == domain] == expected


def test_a_handed_session_keeps_its_settings(spark, scored, tmp_path):
    """A notebook's session: the job's parameter setting holds for its query only, then is as it was."""
    key = CONSTANT_PARAMETERS
    before = spark.conf.get(key, None)
    try:
        spark.conf.unset(key)
        select.run(spark, select.options(input=scored, output=str(tmp_path / "selected"), fraction=0.2))
        assert spark.conf.get(key, None) is None
        assert len(selected(spark, str(tmp_path / "selected"))) == 3
        spark.conf.set(key, "false")
        select.run(spark, select.options(input=scored, output=str(tmp_path / "again"), fraction=0.2))
        assert spark.conf.get(key) == "false"
    finally:
        spark.conf.set(key, before) if before is not None else spark.conf.unset(key)


def test_a_flag_value_with_sql_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's own one-line exit
        run_job(select, ["--input", tmp_path / "s", "--output", tmp_path / "o", "--fraction", "0.2 OR 1=1"])
    assert exit_.value.code == 2 and "--fraction" in capsys.readouterr().err
    code, out = run_job(select, ["--input", "db.t; DROP TABLE x", "--output", tmp_path / "o"], capsys)
    assert code == 2 and "not a valid table name" in out.err


def test_columns_not_carried_are_joined_back_from_the_input(spark, tmp_path, fixture_model):
    """score.py --carry-cols id,domain keeps the text out of the scored table; select.py's output still
    has every input column, joined back by id from the input the scored table records."""
    from spark_jobs import score
    from tests.helpers import SAMPLE_TEXTS, write_docs, write_heads

    docs = write_docs(spark, SAMPLE_TEXTS, tmp_path / "docs")
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    scored = str(tmp_path / "scored")
    score.run(spark, score.options(input=docs, output=scored, model=fixture_model, heads=heads, max_seq_len=64,
                                   carry_cols="id,domain"))
    assert "text" not in spark.read.format("delta").load(scored).columns
    output = str(tmp_path / "selected")
    assert run_job(select, ["--input", scored, "--output", output, "--fraction", 0.5])[0] == 0
    rows = spark.read.format("delta").load(output).collect()
    texts = {r[0]: r[2] for r in SAMPLE_TEXTS}
    assert rows and all(r["text"] == texts[r["id"]] for r in rows)
