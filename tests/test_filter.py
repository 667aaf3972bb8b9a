"""spark_jobs/filter.py on small tables: every row in exactly one output, each rule named, duplicates keep
the smallest id, each domain judged by its own rules and thresholds; bad input and a wrong rule,
threshold or domain end with one line and exit code 2 (a wrong name before Spark is asked for)."""

from __future__ import annotations

import pytest

from attention_influence import filter_rules
from spark_jobs import filter as filter_job
from tests.helpers import run_job, write_docs
from tests.test_gopher import CRAFTED
from tests.test_quality_rules import CLEAN, CRAFTED as QUALITY_CRAFTED

# The stage before this issue: exact duplicates and Gopher's repetition rules, on every domain.
REPETITION_ONLY = ["--rules", "exact_duplicate,gopher_repetition", "--domain-rules", ""]

pytestmark = pytest.mark.slow


def documents():
    """Clean texts, a duplicate group (case and white space differ), and one crafted document per rule."""
    clean = [(f"clean-{i}", "prose", f"Document number {i} says something different from the others, "
                                     f"about topic {i * 7}.") for i in range(4)]
    group = [("dup-b", "prose", "The  same text, TWICE\nand again."), ("dup-a", "prose", "the same text, twice and again."),
             ("dup-c", "code", "The same text, twice and again.  ")]
    crafted = [(f"rule-{rule}", "prose", text) for rule, text in CRAFTED.items()]
    nulls = [("null-text", "prose", None)]
    # a duplicate of a document a Gopher rule rejects: rejected as a duplicate, naming it
    lines = "red\nred\nred\ngreen\nblue\nyellow"  # 2 of 6 lines repeat: 0.33 > 0.30
    bad_pair = [("rej-b", "prose", lines), ("rej-a", "prose", lines.upper())]
    return clean + group + crafted + nulls + bad_pair


def outputs(spark, tmp_path):
    kept = spark.read.format("delta").load(str(tmp_path / "kept")).collect()
    rejected = spark.read.format("delta").load(str(tmp_path / "rejected")).collect()
    return kept, rejected


def test_every_row_in_exactly_one_table_with_its_rule(spark, tmp_path, capsys):
    rows = documents()
    source = write_docs(spark, rows, tmp_path / "docs")
    code, out = run_job(filter_job, ["--input", source, "--output", tmp_path / "kept",
                                     "--rejected", tmp_path / "rejected"] + REPETITION_ONLY, capsys)
    assert code == 0, out.err
    kept, rejected = outputs(spark, tmp_path)
    ids = [r["id"] for r in kept] + [r["id"] for r in rejected]
    assert sorted(ids) == sorted(r[0] for r in rows)  # each input row once, in one table only
    assert set(kept[0].asDict()) == {"id", "domain", "text"}  # kept: the input's columns, ready to score
    by_id = {r["id"]: r for r in rejected}
    for rule in CRAFTED:
        assert by_id[f"rule-{rule}"]["rejected_by"] == rule
    assert by_id["null-text"]["rejected_by"] == "empty"
    # the duplicate group keeps its smallest id; the others name it
    assert "dup-a" in {r["id"] for r in kept}
    assert {(by_id[i]["rejected_by"], by_id[i]["duplicate_of"]) for i in ("dup-b", "dup-c")} == {
        ("exact_duplicate", "dup-a")}
    assert {r["id"] for r in kept} == {f"clean-{i}" for i in range(4)} | {"dup-a"}
    # the first of a group is judged by the rules, the rest are duplicates of it even when it is rejected
    assert [(by_id[i]["rejected_by"], by_id[i]["duplicate_of"]) for i in ("rej-a", "rej-b")] == [
        ("gopher_dup_line_frac", None), ("exact_duplicate", "rej-a")]
    # the printed counts per rule add up
    assert f"{len(rows)} documents, 5 kept" in out.out and "  exact_duplicate: 3" in out.out
    assert "  gopher_dup_line_frac: 2" in out.out


def test_other_id_and_text_columns_and_integer_ids(spark, tmp_path):
    rows = [(3, "same words here"), (1, "Same words   here"), (2, "other words entirely")]
    source = write_docs(spark, rows, tmp_path / "docs", ddl="doc_no INT, body STRING")
    counts = filter_job.run(spark, filter_job.options(input=source, output=str(tmp_path / "kept"),
                                                      rejected=str(tmp_path / "rejected"),
                                                      id_col="doc_no", text_col="body", rules="exact_duplicate"))
    kept, rejected = outputs(spark, tmp_path)
    assert sorted(r["doc_no"] for r in kept) == [1, 2]
    assert [(r["doc_no"], r["rejected_by"], r["duplicate_of"]) for r in rejected] == [(3, "exact_duplicate", 1)]
    assert counts == {"kept": 2, "exact_duplicate": 1}


def test_bad_input_is_one_line_and_exit_2(spark, tmp_path, capsys):
    out = ["--output", tmp_path / "kept", "--rejected", tmp_path / "rejected"]
    code, captured = run_job(filter_job, ["--input", tmp_path / "missing"] + out, capsys)
    assert code == 2 and captured.err.strip().startswith("error: table not found")
    assert len(captured.err.strip().splitlines()) == 1
    source = write_docs(spark, [("a", "x", "text")], tmp_path / "docs")
    code, captured = run_job(filter_job, ["--input", source, "--text-col", "body"] + out, capsys)
    assert code == 2 and "has no column(s) body" in captured.err and len(captured.err.strip().splitlines()) == 1
    code, captured = run_job(filter_job, ["--input", source, "--output", source, "--rejected", tmp_path / "r"], capsys)
    assert code == 2 and "three different tables" in captured.err
    assert not (tmp_path / "kept").exists() and not (tmp_path / "rejected").exists()


def test_rule_names_are_the_core_ones():
    assert set(CRAFTED) | set(QUALITY_CRAFTED) <= set(filter_rules.rule_names())


def test_each_domain_by_its_rules_and_thresholds(spark, tmp_path, capsys):
    """conf/filter.yaml's defaults (FineWeb's rules; code: BigCode's) with one domain skipped and one
    threshold set for one domain. Near-duplicates are looked for among what the other rules keep: `p-near`
    (one word changed) goes, `w-forty` stays, as its near-duplicate `p-forty` was rejected by a rule."""
    code_like = "def area(r):\n    return 3.14159 * r ** 2  # [(r, r)]\n"  # prose rules: too few words
    forty_words = ("The cat and the dog sat by the door. It was the end of a long day. We went to the park with "
                   "them. The sun was low and warm over the hills. Then we all went home to eat.")
    rows = [("p-clean", "prose", CLEAN), ("p-near", "prose", CLEAN.replace("river", "stream")),
            ("p-short", "prose", QUALITY_CRAFTED["gopher_min_words"]),
            ("p-curly", "prose", QUALITY_CRAFTED["c4_curly_bracket"]),
            ("p-lines", "prose", QUALITY_CRAFTED["fineweb_line_punct_ratio"]),
            ("c-func", "code", code_like), ("c-func-copy", "code", code_like),
            ("c-long", "code", QUALITY_CRAFTED["code_max_line_length"]),
            ("l-short", "legal", "Short."), ("l-empty", "legal", " "),
            ("p-forty", "prose", forty_words), ("w-forty", "web", forty_words + " Bread too."),
            ("w-hash", "web", QUALITY_CRAFTED["gopher_max_hash_ratio"])]
    source = write_docs(spark, rows, tmp_path / "docs")
    code, out = run_job(filter_job, ["--input", source, "--output", tmp_path / "kept", "--rejected",
                                     tmp_path / "rejected", "--skip-domains", "legal",
                                     "--thresholds", "web:gopher_min_words=30"], capsys)
    assert code == 0, out.err
    kept, rejected = outputs(spark, tmp_path)
    assert sorted(r["id"] for r in kept) == ["c-func", "l-empty", "l-short", "p-clean", "w-forty"]
    by_id = {r["id"]: r for r in rejected}
    assert by_id["p-near"]["duplicate_of"] == "p-clean" and by_id["c-func-copy"]["duplicate_of"] == "c-func"
    assert {r["id"]: r["rejected_by"] for r in rejected} == {
        "p-near": "near_duplicate", "p-short": "gopher_min_words", "p-forty": "gopher_min_words", "p-curly": "c4_curly_bracket", "p-lines": "fineweb_line_punct_ratio",
        "c-func-copy": "exact_duplicate", "c-long": "code_max_line_length",
        "w-hash": "gopher_top_3_gram"}  # its four copies of one sentence: repetition is checked before quality
    assert "  code: 3 documents, 1 kept (rejected: code_max_line_length 1, exact_duplicate 1)" in out.out
    assert "  legal: 2 documents, 2 kept" in out.out


def test_wrong_rule_threshold_or_domain_is_one_line_and_exit_2(spark, tmp_path, capsys, monkeypatch):
    source = write_docs(spark, [("a", "prose", CLEAN), ("b", "code", "x = 1\n")], tmp_path / "docs")
    tables = ["--input", source, "--output", tmp_path / "kept", "--rejected", tmp_path / "rejected"]
    asked = []
    monkeypatch.setattr(filter_job, "get_spark", lambda name, tables=None: asked.append(name) or spark)
    for flags, message in (
            (["--rules", "exact_duplicate,gopher_min_word"], "--rules: unknown rule 'gopher_min_word' (did you mean "
                                                             "gopher_min_words?)"),
            (["--domain-rules", "code=code,fineweb"], "--domain-rules: unknown rule 'fineweb'"),
            (["--domain-rules", "code"], "--domain-rules: domain rules 'code' are not domain=rules"),
            (["--thresholds", "gopher_min_wrds=3"], "--thresholds: unknown threshold 'gopher_min_wrds'"),
            (["--thresholds", "gopher_min_words=-1"], "--thresholds: threshold gopher_min_words must be a number >= 0"),
            (["--skip-domains", "code"], "domain(s) code both skipped and given rules")):
        code, captured = run_job(filter_job, tables + flags, capsys)
        assert code == 2 and captured.err.startswith(f"error: {message}"), captured.err
        assert len(captured.err.strip().splitlines()) == 1
    assert asked == []  # each was refused before the job asked for Spark
    code, captured = run_job(filter_job, tables + ["--skip-domains", "legl"], capsys)
    assert code == 2 and captured.err.strip() == f"error: unknown domain(s) legl: input {source} has no such domain"
    assert not (tmp_path / "kept").exists() and not (tmp_path / "rejected").exists()
