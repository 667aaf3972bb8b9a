"""The Databricks-format notebooks (SPEC §6): widgets and display() as on Databricks, run here as
plain Python on the local session, against the tables they produce."""

from __future__ import annotations

import json
import math

import pytest

from spark_jobs.notebook import job_defaults, show, widgets
from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))


class FakeWidgets:
    """dbutils.widgets as Databricks has it: text(name, default, label) declares, get(name) reads."""

    def __init__(self, values):
        self.values = dict(values)
        self.declared = {}

    def text(self, name, default_value, label=None):
        assert isinstance(default_value, str)
        self.declared[name] = default_value

    def get(self, name):
        assert name in self.declared, f"widget {name} read before it was declared"
        return self.values.get(name, self.declared[name])


class FakeDbutils:
    def __init__(self, values):
        self.widgets = FakeWidgets(values)


def run_notebook(path, spark, dbutils, display):
    """Run a Databricks source notebook as Databricks does: cell by cell (split at its COMMAND
    markers) in one namespace that holds `spark`, `dbutils` and `display`."""
    text = path.read_text()
    header = "# Databricks notebook source\n"
    assert text.startswith(header), f"{path.name} would import into Databricks as a plain file"
    cells = text[len(header):].split("\n# COMMAND ----------\n")
    namespace = {"spark": spark, "dbutils": dbutils, "display": display, "__name__": "__main__"}
    for number, cell in enumerate(cells, 1):
        exec(compile(cell, f"{path.name} cell {number}", "exec"), namespace)
    return len(cells)


def test_widgets_without_dbutils_are_the_defaults(spark, capsys):
    assert widgets(None, {"fraction": 0.2, "samples": 32}) == {"fraction": "0.2", "samples": "32"}
    show(spark.createDataFrame([("code", 3)], "domain STRING, documents INT"))
    assert "|code  |3        |" in capsys.readouterr().out
    shown = []
    show(spark.range(2), shown.append)
    assert len(shown) == 1


def test_notebooks_run_in_order_with_widgets(spark, tmp_path, monkeypatch, fixture_model, capsys):
    monkeypatch.delenv("ATTENTION_INFLUENCE_OUTPUT", raising=False)
    monkeypatch.delenv("ATTENTION_INFLUENCE_MODEL", raising=False)
    values = {"output_dir": str(tmp_path), "model": fixture_model, "per_domain": "6", "samples": "2",
              "fraction": "0.5"}
    assert [n.name for n in NOTEBOOKS] == ["01_detect_heads.py", "02_score.py", "03_select.py", "04_analyse.py"]
    displayed = []
    declared = {}
    for notebook in NOTEBOOKS:
        dbutils = FakeDbutils(values)
        assert run_notebook(notebook, spark, dbutils, displayed.append) >= 2
        declared[notebook.name] = dbutils.widgets.declared

    # the widgets' defaults are the jobs' defaults from conf/*.yaml
    detect, corpus, select = job_defaults("detect_heads"), job_defaults("build_corpus"), job_defaults("select")
    assert declared["01_detect_heads.py"]["samples"] == str(detect["samples"])
    assert declared["01_detect_heads.py"]["top_fraction"] == str(detect["top_fraction"])
    assert declared["01_detect_heads.py"]["context_tokens"] == str(detect["context_tokens"])
    assert declared["01_detect_heads.py"]["per_domain"] == str(corpus["per_domain"])
    assert declared["01_detect_heads.py"]["model"] == str(REPO / detect["model"])
    assert declared["02_score.py"]["mode"] == job_defaults("score")["mode"]
    assert declared["03_select.py"]["fraction"] == declared["04_analyse.py"]["fraction"] == str(select["fraction"])
    assert all(d["output_dir"] == str(REPO / "demo-output") for d in declared.values())

    # ... and the values set in the widgets are the ones used
    corpus_rows = spark.read.format("delta").load(str(tmp_path / "corpus"))
    assert corpus_rows.count() == 3 * 6
    scored = spark.read.format("delta").load(str(tmp_path / "scored"))
    assert scored.count() == corpus_rows.count()
    ok = dict(scored.where("status = 'ok'").groupBy("domain").count().collect())
    selected = dict(spark.read.format("delta").load(str(tmp_path / "selected")).groupBy("domain").count().collect())
    assert selected == {domain: math.ceil(0.5 * n) for domain, n in ok.items()}
    heads = json.loads((tmp_path / "heads.json").read_text())
    assert heads["model"] == fixture_model

    # display() got every table the notebooks show, as DataFrames: the head ranking first, best head on top
    assert len(displayed) >= 7 and all(hasattr(df, "collect") for df in displayed)
    top_heads = displayed[0].collect()
    assert [r["rank"] for r in top_heads] == list(range(1, len(top_heads) + 1))
    assert sorted((r["layer"], r["head"]) for r in top_heads if r["selected"]) == sorted(map(tuple, heads["heads"]))
    analysis = (tmp_path / "analysis.txt").read_text()
    assert all(f"  {domain}: {n} documents" in analysis for domain, n in ok.items())

    # a dry run from the score notebook writes nothing
    from delta.tables import DeltaTable

    version = DeltaTable.forPath(spark, str(tmp_path / "scored")).history(1).first()["version"]
    run_notebook(REPO / "notebooks" / "02_score.py", spark, FakeDbutils(dict(values, dry_run="true", mode="overwrite")),
                 displayed.append)
    assert "nothing written" in capsys.readouterr().out
    assert DeltaTable.forPath(spark, str(tmp_path / "scored")).history(1).first()["version"] == version


def test_selection_bias_sql_against_pandas(spark, tmp_path):
    """The analysis SQL (corr, medians, Jaccard with the low-loss selection) against a pandas reference."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [f"d{i:02d}" for i in range(40)], "domain": ["a"] * 25 + ["b"] * 15,
                          "n_tokens": rng.integers(10, 500, 40).astype("int32"),
                          "loss_full": rng.uniform(1, 5, 40), "attention_influence": rng.normal(0.1, 0.05, 40),
                          "status": "ok"})
    from spark_jobs import analysis

    frame["loss_masked"] = frame["loss_full"] * 1.1
    rows = {r["domain"]: r for r in analysis.selection_bias(spark, spark.createDataFrame(frame), 0.2).collect()}
    for domain, group in frame.groupby("domain"):
        k = math.ceil(0.2 * len(group))
        top = set(group.sort_values(["attention_influence", "id"], ascending=[False, True])["id"][:k])
        low = set(group.sort_values(["loss_full", "id"])["id"][:k])
        row = rows[domain]
        assert row["documents"] == len(group) and row["selected"] == k == row["selected_low_loss"]
        assert row["corr_n_tokens"] == pytest.approx(group["attention_influence"].corr(group["n_tokens"]), abs=1e-3)
        assert row["corr_loss_full"] == pytest.approx(group["attention_influence"].corr(group["loss_full"]), abs=1e-3)
        assert row["in_both"] == len(top & low)
        assert row["jaccard"] == pytest.approx(len(top & low) / len(top | low), abs=1e-3)
