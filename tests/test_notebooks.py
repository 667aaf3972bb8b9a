"""The Databricks-format notebooks, run as plain Python on the local default (SPEC §6)."""

from __future__ import annotations

import runpy

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_databricks_source_format(notebook):
    text = notebook.read_text()
    assert text.startswith("# Databricks notebook source\n")
    assert text.count("# COMMAND ----------") >= 2
    assert "# MAGIC %md" in text


def test_notebooks_run_in_order(spark, tmp_path, monkeypatch, fixture_model):
    monkeypatch.setenv("ATTENTION_INFLUENCE_OUTPUT", str(tmp_path))
    monkeypatch.setenv("ATTENTION_INFLUENCE_MODEL", fixture_model)
    monkeypatch.setenv("ATTENTION_INFLUENCE_DOCS", "12")
    monkeypatch.setenv("ATTENTION_INFLUENCE_SAMPLES", "4")
    assert [n.name for n in NOTEBOOKS] == ["01_detect_heads.py", "02_score.py", "03_select.py", "04_analyse.py"]
    for notebook in NOTEBOOKS:
        runpy.run_path(str(notebook), init_globals={"spark": spark}, run_name="__main__")
    corpus = spark.read.format("delta").load(str(tmp_path / "corpus")).count()
    assert spark.read.format("delta").load(str(tmp_path / "scored")).count() == corpus
    assert spark.read.format("delta").load(str(tmp_path / "selected")).count() > 0
    assert (tmp_path / "heads.json").exists() and (tmp_path / "heads.png").exists()
    assert (tmp_path / "plots" / "influence_by_domain.png").exists()
    assert (tmp_path / "plots" / "loss_full_vs_masked.png").exists()
