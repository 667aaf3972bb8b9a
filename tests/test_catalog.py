"""Named tables: catalog names as every job's --input/--output, register_tables, and the documented
queries (docs/sql-and-notebooks.md) by table name through the real `spark-sql` launcher (a private
Derby metastore per test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from spark_jobs import build_corpus, detect_heads, register_tables, score, select
from spark_jobs.cli import JobError
from spark_jobs.tables import catalog_name, register_delta_table
from tests.conftest import REPO, private_catalog
from tests.helpers import SAMPLE_TEXTS, run_job, write_docs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bad", ["demo.x`; DROP TABLE y", "demo x", "demo.", "a.b.c.d", "demo.'x'", "", "1x.y"])
def test_catalog_names_are_plain_identifiers(bad):
    with pytest.raises(JobError):
        catalog_name(bad)


def test_catalog_name_is_backquoted():
    assert catalog_name("demo.scored_v2") == "`demo`.`scored_v2`"


def test_every_job_reads_and_writes_catalog_tables(spark, tmp_path, fixture_model):
    spark.sql("CREATE DATABASE IF NOT EXISTS catalog_jobs")
    heads = tmp_path / "heads.json"
    assert run_job(build_corpus, ["--output", "catalog_jobs.corpus", "--per-domain", 4])[0] == 0
    assert run_job(detect_heads, ["--model", fixture_model, "--output", "catalog_jobs.head_scores",
                                  "--heads-out", heads, "--samples", 2])[0] == 0
    assert run_job(score, ["--input", "catalog_jobs.corpus", "--output", "catalog_jobs.scored",
                           "--model", fixture_model, "--heads", heads])[0] == 0
    assert run_job(select, ["--input", "catalog_jobs.scored", "--output", "catalog_jobs.selected",
                            "--fraction", 0.5])[0] == 0

    corpus = spark.table("catalog_jobs.corpus").count()
    assert corpus == 12
    assert spark.table("catalog_jobs.scored").count() == corpus
    head_count = spark.table("catalog_jobs.head_scores").count()
    assert head_count == 2 * 8  # every head of the fixture model (2 layers x 8 heads)
    ok = spark.table("catalog_jobs.scored").where("status = 'ok'").groupBy("domain").count().collect()
    selected = dict(spark.sql("SELECT domain, COUNT(*) FROM catalog_jobs.selected GROUP BY domain").collect())
    assert selected == {r["domain"]: -(-r["count"] // 2) for r in ok}  # ceil(0.5 * ok rows) per domain


def test_register_points_at_the_delta_folder(spark, tmp_path):
    first = write_docs(spark, SAMPLE_TEXTS, tmp_path / "one" / "corpus")
    second = write_docs(spark, SAMPLE_TEXTS[:3], tmp_path / "two" / "corpus")
    assert run_job(register_tables, ["--root", tmp_path / "one", "--database", "catalog_reg",
                                      "--tables", "corpus"])[0] == 0
    assert spark.table("catalog_reg.corpus").count() == len(SAMPLE_TEXTS)
    assert register_delta_table(spark, "catalog_reg.corpus", first) == "unchanged"
    assert register_delta_table(spark, "catalog_reg.corpus", second) == "replaced"
    assert spark.table("catalog_reg.corpus").count() == 3
    assert spark.read.format("delta").load(first).count() == len(SAMPLE_TEXTS)  # the old data is untouched
    code, _ = run_job(register_tables, ["--root", tmp_path / "nothing", "--database", "catalog_reg",
                                        "--tables", "corpus"])
    assert code == 2
    code, _ = run_job(register_tables, ["--root", tmp_path / "one", "--database", "x; DROP", "--tables", "corpus"])
    assert code == 2


def documented_queries() -> list[str]:
    """The three queries on a scored table, as docs/sql-and-notebooks.md prints them."""
    text = (REPO / "docs" / "sql-and-notebooks.md").read_text()
    block = text.split("## Three queries on a scored table", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    return [q.strip() for q in block.split(";") if q.strip()]


def test_documented_queries_by_name_through_spark_sql(spark, tmp_path):
    """register_tables, then spark-sql, each its own process on one file-based Derby metastore:
    the first must end cleanly for the second to open it (embedded Derby: one process at a time)."""
    out = tmp_path / "demo-output"
    write_docs(spark, SAMPLE_TEXTS, out / "corpus")
    rows = [(i, d, t, len(t.split()), 0.01 * n, "ok", None) for n, (i, d, t) in enumerate(SAMPLE_TEXTS)]
    rows.append(("bad-1", "code", None, None, None, "error", "oversized"))
    (spark.createDataFrame(rows, "id STRING, domain STRING, text STRING, n_tokens INT, attention_influence DOUBLE, "
                                 "status STRING, error STRING").write.format("delta").save(str(out / "scored")))
    profile = tmp_path / "profile.conf"
    props = {k: v for k, v in (line.split(None, 1) for line in
                                 (REPO / "conf" / "spark" / "local.conf").read_text().splitlines()
                                 if line.strip() and not line.startswith("#"))}
    props.update(private_catalog(tmp_path / "catalog"))
    props.update({"spark.master": "local[1]", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "1"})
    profile.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    env = dict(os.environ, ATTENTION_INFLUENCE_SPARK_CONF=str(profile))

    registered = subprocess.run([sys.executable, str(REPO / "spark_jobs" / "register_tables.py"), "--root", out,
                                 "--database", "demo", "--tables", "corpus,scored"],
                                capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert registered.returncode == 0, registered.stderr
    assert "demo.scored -> " in registered.stdout

    queries = [q.replace("delta.`demo-output/scored`", "demo.scored") for q in documented_queries()]
    assert len(queries) == 3 and all("demo.scored" in q for q in queries)
    answered = subprocess.run([sys.executable, str(REPO / "spark_jobs" / "spark_sql.py"), "-e", ";\n".join(queries)],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert answered.returncode == 0, answered.stderr[-3000:]
    lines = answered.stdout.splitlines()
    # query 1: one row per (domain, status) with the document count
    assert any(re.match(r"code\s+ok\s+4\s", line) for line in lines), answered.stdout
    assert any(re.match(r"code\s+error\s+1\s", line) for line in lines), answered.stdout
    # query 2: the best prose document first in its domain; query 3: the failure and its reason
    assert any(line.startswith("prose\tprose-3\t") for line in lines), answered.stdout
    assert any(re.match(r"error\s+oversized\s+1$", line) for line in lines), answered.stdout
    assert "not found" not in answered.stderr and "spark-packages" not in answered.stderr
