"""The pipeline on a Spark Connect session, in a process of its own (tests/test_connect.py runs it).

A local Connect server (`SparkSession.builder.remote("local[2]")`, Delta from the suite's profile)
cannot share a JVM with the suite's classic session, hence the subprocess. It runs the jobs'
`run(spark, options)` (scoring, selection, registration) and the four notebooks cell by cell
(corpus, head detection, scoring, selection, analysis), exactly as a Databricks user would on
serverless or a shared cluster, and prints what the test compares, as JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spark_jobs import register_tables, score, select, session  # noqa: E402
from tests.test_notebooks import NOTEBOOKS, FakeDbutils, run_notebook  # noqa: E402


def rows_of(spark, path: str, columns: list[str]) -> list[list]:
    return [list(r) for r in spark.read.format("delta").load(path).select(*columns).collect()]


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--root", "--docs", "--heads", "--model", "--appended"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    root = Path(args.root)
    spark = session.connect_session("local[2]")
    assert session.is_connect(spark), type(spark)
    result = {"session": type(spark).__module__}

    scored = str(root / "scored")
    flags = dict(input=args.docs, output=scored, model=args.model, heads=args.heads)
    first = score.run(spark, score.options(**flags))
    appended = json.loads(Path(args.appended).read_text())
    spark.createDataFrame(appended, "id STRING, domain STRING, text STRING").write.format("delta") \
        .mode("append").save(args.docs)
    second = score.run(spark, score.options(**flags))
    overwrite = score.run(spark, score.options(**dict(flags, output=str(root / "scored_overwrite"),
                                                      mode="overwrite")))
    result["runs"] = [{"documents": s.documents, "by_status": s.by_status, "committed_before": s.committed_before,
                       "total": s.total} for s in (first, second, overwrite)]
    columns = ["id", "status", "n_tokens", "loss_full", "loss_masked", "attention_influence", "scorer"]
    result["scored"] = rows_of(spark, scored, columns)
    result["scored_overwrite"] = rows_of(spark, str(root / "scored_overwrite"), columns)
    result["state_left"] = sorted(p.name for p in (root / "_attention_influence_state" / "scored_overwrite").glob("*")) \
        if (root / "_attention_influence_state" / "scored_overwrite").exists() else []

    select.run(spark, select.options(input=scored, output=str(root / "selected"), fraction=0.5))
    result["selected"] = sorted(r[0] for r in rows_of(spark, str(root / "selected"), ["id"]))
    register_tables.run(spark, register_tables.parse_options(
        ["--root", str(root), "--database", "connect_demo", "--tables", "scored,selected"]))
    result["registered_selected"] = spark.sql("SELECT COUNT(*) FROM connect_demo.selected").first()[0]

    notebook_out = root / "notebooks"
    values = {"output_dir": str(notebook_out), "model": args.model, "per_domain": "6", "samples": "2",
              "fraction": "0.5"}
    displayed = []
    cells = {}
    for notebook in NOTEBOOKS:
        cells[notebook.name] = run_notebook(notebook, spark, FakeDbutils(values), displayed.append)
    result["notebook_cells"] = cells
    result["notebook_displayed"] = len(displayed)
    result["notebook_scored"] = spark.read.format("delta").load(str(notebook_out / "scored")).count()
    result["notebook_selected"] = dict(spark.read.format("delta").load(str(notebook_out / "selected"))
                                       .groupBy("domain").count().collect())
    result["notebook_analysis"] = (notebook_out / "analysis.txt").exists()
    result["detected_heads"] = json.loads((notebook_out / "heads.json").read_text())["heads"]
    result["head_score_rows"] = spark.read.format("delta").load(str(notebook_out / "head_scores")).count()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
