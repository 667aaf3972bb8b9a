"""The summary `make demo` ends with: read from the tables and files the demo wrote."""

from __future__ import annotations

import json
import random

from spark_jobs import demo_summary
from tests.helpers import run_job

SCORED_DDL = ("id STRING, domain STRING, text STRING, n_tokens INT, loss_full DOUBLE, loss_masked DOUBLE, "
              "attention_influence DOUBLE, status STRING, error STRING")


def test_summary_shows_heads_accuracies_throughput_and_extremes(spark, tmp_path, capsys):
    rng = random.Random(0)
    rows = []
    for domain in ("code", "legal", "prose"):
        for i in range(6):
            full = rng.uniform(1, 3)
            masked = full * rng.uniform(1.0, 1.5)
            rows.append((f"{domain}-{i}", domain, f"text of {domain} number {i}\nsecond line", 100 + i, full, masked,
                         (masked - full) / full, "ok", None))
    rows.append(("code-bad", "code", "", 0, None, None, None, "empty", "text is blank"))
    spark.createDataFrame(rows, SCORED_DDL).write.format("delta").save(str(tmp_path / "scored"))
    (tmp_path / "heads.json").write_text(json.dumps({
        "model": "m", "model_revision": "local-x", "top_fraction": 0.05, "heads": [[3, 1], [4, 0]],
        "scores": {"3.1": 0.61, "4.0": 0.42, "0.0": 0.0}, "accuracy_random_masked": 0.7,
        "accuracy_masked": 0.125, "accuracy_full": 0.75}))
    (tmp_path / "score_summary.txt").write_text("scored 19 documents (1845 tokens) in 12.0s: 154 tokens/s; ok\n")

    code, captured = run_job(demo_summary, ["--out", tmp_path, "--per-side", 1], capsys)
    out = captured.out
    assert code == 0
    assert "3.1 (0.61), 4.0 (0.42)" in out
    assert "accuracy_full 0.750, accuracy_masked 0.125, accuracy_random_masked 0.700" in out
    assert "154 tokens/s" in out
    assert "documents scored: 19 (empty 1, ok 18)" in out
    # The top and bottom document of each domain, computed here independently.
    ok = [r for r in rows if r[7] == "ok"]
    for domain in ("code", "legal", "prose"):
        ranked = sorted((r for r in ok if r[1] == domain), key=lambda r: (-r[6], r[0]))
        for r in (ranked[0], ranked[-1]):
            assert f"{r[6]:+.4f}" in out and f"text of {domain} number {r[0][-1]} second line" in out
        for r in ranked[1:-1]:
            assert f"{r[6]:+.4f}" not in out


def test_summary_shows_filter_counts_and_the_probe_report(spark, tmp_path):
    """With the filter's tables and a probe report in the demo folder, the summary names each rule's count,
    overall and per domain, and each selector's share."""
    docs = "id STRING, domain STRING, text STRING"
    spark.createDataFrame([("a", "code", "x"), ("b", "code", "y")], docs).write.format("delta").save(str(tmp_path / "kept"))
    spark.createDataFrame([("c", "code", "x", "exact_duplicate", "a"), ("d", "prose", "z z", "gopher_top_2_gram", None),
                           ("e", "prose", "w w", "exact_duplicate", "f")],
                          docs + ", rejected_by STRING, duplicate_of STRING").write.format("delta").save(
        str(tmp_path / "rejected"))
    assert demo_summary.filter_lines(spark, tmp_path) == [
        "filter: 5 documents, 2 kept, 3 rejected (exact_duplicate 2, gopher_top_2_gram 1)",
        "  code: 3 documents, 2 kept (rejected: exact_duplicate 1)",
        "  prose: 2 documents, 0 kept (rejected: exact_duplicate 1, gopher_top_2_gram 1)"]
    assert demo_summary.probe_lines(spark, tmp_path) == []
    spark.createDataFrame([("humaneval", "random", 0.25, 0.5, 0.0, 0.5, 4, 4)],
                          "probe_set STRING, selector STRING, share_in_top DOUBLE, base_rate DOUBLE, ci_low DOUBLE, "
                          "ci_high DOUBLE, probes INT, controls INT").write.format("delta").save(
        str(tmp_path / "probe_report"))
    assert demo_summary.probe_lines(spark, tmp_path)[1] == (
        "  humaneval random               0.250 (base 0.500, CI 0.000-0.500; 4 probes, 4 controls)")
