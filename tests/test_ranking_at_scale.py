"""Selection and analysis rank with a distributed sort: the same rows as the window queries they
replace (kept here as the reference), and no stage where one task reads a whole domain."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.stage_skew import measured
from spark_jobs import select
from spark_jobs.session import run_sql, session_settings
from tests.conftest import REPO

pytestmark = pytest.mark.slow

REFERENCE_SQL = (REPO / "tests" / "select_top_window_reference.sql").read_text()
SCORED_DDL = "id STRING, domain STRING, n_tokens INT, attention_influence DOUBLE, status STRING, text STRING"


def scored_rows(seed: int, n: int = 400):
    """Three domains of unequal size, scores from a few values (many ties), error and empty rows,
    a null domain, ids that sort differently as text and as numbers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        domain = rng.choices(["web", "code", "math", None], weights=[70, 20, 8, 2])[0]
        status = rng.choices(["ok", "error", "empty"], weights=[90, 6, 4])[0]
        score = None if status == "empty" else round(rng.choice([-0.1, 0.0, 0.05, 0.1, 0.2]) + rng.choice([0, 0.01]), 3)
        rows.append((f"d{rng.randrange(10 ** 6)}-{i}", domain, rng.randrange(1, 300), score, status, f"text {i}"))
    return rows


def reference(spark, scored, options):
    """The window query over `candidates_source` as select.py registers it."""
    select.register_candidates(spark, scored, options)
    return run_sql(spark, REFERENCE_SQL, select.selection_parameters(options))


def columns(frame):
    """Names and types (a Delta table stores every written column as nullable)."""
    return [(f.name, f.dataType) for f in frame.schema.fields]


def rows_of(frame):
    return sorted(tuple(r) for r in frame.collect())


CASES = [dict(fraction=0.2), dict(fraction=0.5, by_domain=False), dict(fraction=0.01), dict(fraction=1.0),
         dict(token_budget=5000), dict(token_budget=20000, by_domain=False), dict(fraction=0.3, min_tokens=150),
         dict(token_budget=3000, min_tokens=100)]


@pytest.mark.parametrize("seed", [0, 1])
def test_distributed_selection_equals_the_window_query(spark, tmp_path, seed):
    path = str(tmp_path / "scored")
    spark.createDataFrame(scored_rows(seed), SCORED_DDL).repartition(5).write.format("delta").save(path)
    scored = spark.read.format("delta").load(path)
    with session_settings(spark, {"spark.sql.shuffle.partitions": "7"}):  # several ranges, blocks per range
        for case in CASES:
            options = select.options(input=path, output=str(tmp_path / "out"), **case)
            options = select.with_recorded_columns(spark, options)
            expected = reference(spark, scored, options)
            got = select.select_top(spark, scored, options)
            assert columns(got) == columns(expected), case
            assert rows_of(got) == rows_of(expected), case
            assert len(rows_of(got)) > 0 or case.get("token_budget"), case


def test_reruns_are_identical_and_ranks_span_ranges(spark, tmp_path):
    """One domain spread over many ranges and blocks (block size forced down): ranks 1..k, no gap."""
    from spark_jobs import ranking

    path = str(tmp_path / "scored")
    rows = [(f"id-{i:05d}", "web" if i % 5 else "code", 10, float(i % 37), "ok", "") for i in range(3000)]
    spark.createDataFrame(rows, SCORED_DDL).write.format("delta").save(path)
    scored = spark.read.format("delta").load(path)
    options = select.with_recorded_columns(spark, select.options(input=path, output=str(tmp_path / "o"),
                                                                 fraction=0.5))
    bits = ranking.BLOCK_BITS
    try:
        ranking.BLOCK_BITS = 6  # blocks of 64 rows: a domain crosses ranges and blocks
        with session_settings(spark, {"spark.sql.shuffle.partitions": "9"}):
            first = rows_of(select.select_top(spark, scored, options))
            second = rows_of(select.select_top(spark, scored, options))
            expected = rows_of(reference(spark, scored, options))
    finally:
        ranking.BLOCK_BITS = bits
    assert first == second == expected
    web = sorted(r[-2] for r in first if r[1] == "web")
    assert web == list(range(1, math.ceil(0.5 * 2400) + 1))


SKEWED_ROWS = 200_000
TASKS = 8


def skewed_table(spark, path: str) -> str:
    """200,000 scored rows in three domains of 80%, 15% and 5%, with a 100-character text."""
    from pyspark.sql import functions as F

    (spark.range(SKEWED_ROWS, numPartitions=4)
     .select(F.format_string("doc-%08d", "id").alias("id"),
             F.when(F.col("id") % 20 < 16, "web").when(F.col("id") % 20 < 19, "code").otherwise("math").alias("domain"),
             (F.abs(F.xxhash64("id")) % 900 + 20).cast("int").alias("n_tokens"),
             (F.abs(F.xxhash64("id", F.lit(1))) % 100000 / 1e5).alias("attention_influence"),
             (F.abs(F.xxhash64("id", F.lit(2))) % 1000 / 250 + 0.5).alias("loss_full"),
             (F.abs(F.xxhash64("id", F.lit(3))) % 1000 / 200 + 0.5).alias("loss_masked"),
             F.lit("ok").alias("status"), F.repeat(F.lit("x"), 100).alias("text"))
     .write.format("delta").save(path))
    return path


def largest_shuffle_stages(spark, query) -> list:
    """The stages of `query` that read at least a tenth of the table from a shuffle, with AQE's
    coalescing off so each stage runs TASKS tasks (coalescing would hide skew behind fewer tasks)."""
    settings = {"spark.sql.shuffle.partitions": str(TASKS), "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    with session_settings(spark, settings), measured(spark) as measurement:
        query()
    return measurement.shuffled(at_least=SKEWED_ROWS // 10)


@pytest.fixture(scope="module")
def skewed(spark, tmp_path_factory):
    return skewed_table(spark, str(tmp_path_factory.mktemp("skewed") / "scored"))


@pytest.mark.parametrize("case", [dict(fraction=0.2), dict(fraction=0.2, by_domain=False),
                                  dict(token_budget=10_000_000)])
def test_no_ranking_stage_holds_a_domain(spark, skewed, tmp_path, case):
    options = select.with_recorded_columns(spark, select.options(input=skewed, output=str(tmp_path / "sel"), **case))
    scored = spark.read.format("delta").load(skewed)
    stages = largest_shuffle_stages(spark, lambda: select.write_selection(spark, scored, options))
    assert stages, "no stage read the table from a shuffle"
    for stage in stages:
        assert stage.largest_share <= 2 / stage.tasks, stage.line()
    selected = spark.read.format("delta").load(str(tmp_path / "sel"))
    if "fraction" in case:
        assert selected.count() == (40_000 if case.get("by_domain", True) is False
                                    else math.ceil(0.2 * 160_000) + math.ceil(0.2 * 30_000) + math.ceil(0.2 * 10_000))


def test_the_window_query_fails_the_same_check(spark, skewed, tmp_path):
    """The check discriminates: the window query puts the 80% domain in one task."""
    options = select.with_recorded_columns(spark, select.options(input=skewed, output=str(tmp_path / "x"), fraction=0.2))
    scored = spark.read.format("delta").load(skewed)
    stages = largest_shuffle_stages(spark, lambda: reference(spark, scored, options).write.format("noop")
                                    .mode("overwrite").save())
    assert max(s.largest_share for s in stages) >= 0.75


@pytest.mark.parametrize("query", ["selection_bias", "extremes"])
def test_no_analysis_stage_holds_a_domain(spark, skewed, query):
    from spark_jobs import analysis

    scored = spark.read.format("delta").load(skewed)
    run = {"selection_bias": lambda: analysis.selection_bias(spark, scored, 0.2).collect(),
           "extremes": lambda: analysis.extremes(spark, scored, 2).collect()}[query]
    stages = largest_shuffle_stages(spark, run)
    assert stages, "no stage read the table from a shuffle"
    for stage in stages:
        assert stage.largest_share <= 2 / stage.tasks, stage.line()


def test_extremes_equal_the_window_query(spark, tmp_path):
    """analysis.extremes against the demo's former window query, on ties and several domains."""
    from spark_jobs import analysis

    rows = [(r[0], r[1] or "none", r[2], r[3], r[4], r[5]) for r in scored_rows(3, 300)]
    from pyspark.sql import functions as F

    scored = (spark.createDataFrame(rows, SCORED_DDL)
              .withColumn("loss_full", F.lit(1.0)).withColumn("loss_masked", F.lit(1.5)))
    scored.createOrReplaceTempView("scored_documents")
    expected = spark.sql("""
        WITH ranked AS (
          SELECT domain, id, n_tokens, loss_full, loss_masked, attention_influence, text,
            ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence DESC, id ASC) AS rank_from_top,
            ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence ASC, id ASC) AS rank_from_bottom
          FROM scored_documents WHERE status = 'ok' AND attention_influence IS NOT NULL)
        SELECT domain, CASE WHEN rank_from_top <= 3 THEN 'top' ELSE 'bottom' END AS side,
               id, n_tokens, loss_full, loss_masked, attention_influence, LEFT(text, 200) AS text_start
        FROM ranked WHERE rank_from_top <= 3 OR rank_from_bottom <= 3
        ORDER BY domain, attention_influence DESC, id""").collect()
    assert analysis.extremes(spark, scored, 3).collect() == expected

