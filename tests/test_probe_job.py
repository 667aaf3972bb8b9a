"""spark_jobs/probe.py end to end on the fixture model: the report's rows, the probes kept out of the
user's tables, a user's own probe table, and one-line errors for bad input."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

from attention_influence.probes import SELECTORS, humaneval_probes
from spark_jobs import probe, score
from spark_jobs import select as select_job
from tests.helpers import run_job, write_docs, write_heads

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def user_table(spark, tmp_path_factory):
    """The user's documents: code (controls for HumanEval) and prose from the demo's corpus builder."""
    from demo.corpus import sample_corpus

    folder = tmp_path_factory.mktemp("user")
    documents = sample_corpus(per_domain=16, max_chars=1600, min_chars=150)
    rows = [(d.id, d.domain, d.text) for d in documents if d.domain in ("code", "prose")]
    return write_docs(spark, rows, folder / "docs"), rows


def probe_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("attention-influence-probe-*")}


def test_humaneval_report_and_probes_stay_out_of_the_users_tables(spark, user_table, fixture_model, tmp_path, capsys):
    source, rows = user_table
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    # the user's own scored and selected tables, as the pipeline leaves them
    scored, selected = str(tmp_path / "scored"), str(tmp_path / "selected")
    score.run(spark, score.options(input=source, output=scored, model=fixture_model, heads=heads, mode="overwrite"))
    select_job.run(spark, select_job.options(input=scored, output=selected, fraction=0.2))
    before = {t: (spark.sql(f"DESCRIBE HISTORY delta.`{t}`").count(), sorted(map(tuple, spark.read.format("delta")
                                                                                 .load(t).select("id").collect())))
              for t in (source, scored, selected)}
    scratch_before = probe_dirs()

    report = str(tmp_path / "report")
    code, out = run_job(probe, ["--input", source, "--model", fixture_model, "--heads", heads, "--output", report,
                                "--probes", "humaneval", "--max-probes", 8, "--resamples", 200], capsys)
    assert code == 0, out.err
    table = spark.read.format("delta").load(report).collect()
    assert sorted(r["selector"] for r in table) == sorted(SELECTORS) and {r["probe_set"] for r in table} == {"humaneval"}
    for r in table:
        n = r["probes"] + r["controls"]
        assert 0 < r["probes"] <= 8 and r["controls"] == r["probes"] and r["dropped_probes"] == 8 - r["probes"]
        assert r["base_rate"] == pytest.approx(r["probes"] / n) and r["top"] == math.ceil(0.2 * n)
        assert r["ci_low"] <= r["share_in_top"] <= r["ci_high"]
        assert r["share_in_top"] * r["top"] == pytest.approx(round(r["share_in_top"] * r["top"]))
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert "humaneval attention_influence:" in out.out

    # the user's tables: same commits, same ids; no HumanEval text anywhere; no scratch left behind
    after = {t: (spark.sql(f"DESCRIBE HISTORY delta.`{t}`").count(), sorted(map(tuple, spark.read.format("delta")
                                                                                .load(t).select("id").collect())))
             for t in (source, scored, selected)}
    assert after == before
    texts = {r["text"] for t in (source, scored, selected) for r in spark.read.format("delta").load(t).collect()}
    assert not texts & {d.text for d in humaneval_probes()}
    assert probe_dirs() == scratch_before


def test_a_users_probe_table(spark, user_table, fixture_model, tmp_path):
    """Six of the user's own prose documents as probes: the other prose documents are the only controls
    (the six themselves are left out, their text being a probe's), each from its probe's length bin."""
    from attention_influence.probes import length_bin, load_tokenizer, token_lengths

    source, rows = user_table
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    prose = [r for r in rows if r[1] == "prose"]
    probes_path = write_docs(spark, [(f"mine-{i}", "prose", text) for i, (_, _, text) in enumerate(prose[:6])],
                             tmp_path / "probes")
    scratch = str(tmp_path / "scratch")
    result = probe.run(spark, probe.options(input=source, model=fixture_model, heads=heads, output=str(tmp_path / "r"),
                                            probes=probes_path, resamples=100, scratch=scratch, fraction=0.5))
    assert {r["probe_set"] for r in result} == {probes_path} and len(result) == len(SELECTORS)
    planted = spark.read.format("delta").load(scratch + "/planted").collect()
    assert {r["domain"] for r in planted} == {"prose"}  # controls from the probes' own domain only
    controls = [r for r in planted if not r["is_probe"]]
    assert {r["source_id"] for r in controls} <= {r[0] for r in prose[6:]}
    probes_kept = [r for r in planted if r["is_probe"]]
    assert len(controls) == len(probes_kept) == result[0]["probes"] > 0
    lengths = token_lengths(load_tokenizer(fixture_model), [r["text"] for r in planted])
    bins = [length_bin(n) for n in lengths]
    assert sorted(b for b, r in zip(bins, planted) if r["is_probe"]) == sorted(
        b for b, r in zip(bins, planted) if not r["is_probe"])


def test_bad_input_is_one_line_and_exit_2(spark, user_table, fixture_model, tmp_path, capsys):
    source, _ = user_table
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    base = ["--model", fixture_model, "--heads", heads, "--output", tmp_path / "r"]
    cases = [
        (["--input", tmp_path / "missing"], "table not found"),
        (["--input", source, "--text-col", "body"], "has no column(s) body"),
        (["--input", source, "--probes", tmp_path / "no-probes"], "table not found"),
        (["--input", source, "--probe-domain", "nowhere"], "no documents in domain 'nowhere'"),
        (["--input", source, "--heads", tmp_path / "none.json"], "heads file not found"),
    ]
    for flags, message in cases:
        code, out = run_job(probe, base + flags, capsys)
        lines = out.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (flags, out.err)
    assert not (tmp_path / "r").exists()
