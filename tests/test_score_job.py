"""spark_jobs/score.py through its real entry point on small Delta tables."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from pyspark.sql import functions as F

from spark_jobs import score
from spark_jobs import tables as table_contract
from tests.helpers import SAMPLE_TEXTS, run_job, write_docs, write_heads

pytestmark = pytest.mark.slow

MAX_SEQ_LEN = 48  # short windows so several documents span more than one


@pytest.fixture(scope="module")
def heads(fixture_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(fixture_model)
    return [(config.num_hidden_layers // 2, 0), (config.num_hidden_layers - 1, config.num_attention_heads - 1)]


@pytest.fixture(scope="module")
def corpus(spark, tmp_path_factory):
    """Good documents plus one of every kind of bad row."""
    path = tmp_path_factory.mktemp("corpus") / "docs"
    rows = SAMPLE_TEXTS + [("null-text", "prose", None), ("blank", "prose", "  \n\t "),
                           ("huge", "legal", "word " * 2000), ("empty", "code", "")]
    write_docs(spark, rows, path)
    invalid_utf8 = spark.createDataFrame([("bad-utf8", "code")], "id STRING, domain STRING") \
        .withColumn("text", F.unhex(F.lit("C328FF")).cast("string"))
    invalid_utf8.write.format("delta").mode("append").save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def scored_once(spark, corpus, fixture_model, heads, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scored")
    heads_file = write_heads(tmp / "heads.json", heads)
    output = str(tmp / "scored")
    code, _ = run_job(score, ["--input", corpus, "--output", output, "--model", fixture_model, "--heads", heads_file,
                              "--max-seq-len", MAX_SEQ_LEN, "--max-chars", 5000, "--partitions", 1,
                              "--token-losses"])
    assert code == 0
    return output, heads_file


def reference_scores(fixture_model, heads, texts, masking="uniform"):
    """The core scorer in this process, float32 (itself tested against a plain transformers forward)."""
    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer

    model, tokenizer = load_model(fixture_model)
    return Scorer(model, tokenizer, heads, MAX_SEQ_LEN, fused=False, masking=masking).score(texts)


def test_output_schema(spark, scored_once):
    output, _ = scored_once
    types = {f.name: f.dataType.simpleString() for f in spark.read.format("delta").load(output).schema.fields}
    assert types == {"id": "string", "domain": "string", "text": "string", "n_tokens": "int",
                     "loss_full": "double", "loss_masked": "double", "attention_influence": "double",
                     "status": "string", "error": "string", "token_loss_full": "array<float>",
                     "token_loss_masked": "array<float>", "scorer": "string", "scored_at": "timestamp"}


def test_every_input_row_once_with_status(spark, corpus, scored_once):
    output, _ = scored_once
    rows = {r["id"]: r for r in spark.read.format("delta").load(output).collect()}
    inputs = [r["id"] for r in spark.read.format("delta").load(corpus).collect()]
    assert sorted(rows) == sorted(inputs)
    assert spark.read.format("delta").load(output).count() == len(inputs)
    assert {i: rows[i]["status"] for i in ("null-text", "blank", "empty", "huge", "bad-utf8")} == {
        "null-text": "empty", "blank": "empty", "empty": "empty", "huge": "error", "bad-utf8": "error"}
    assert "oversized" in rows["huge"]["error"] and "undecodable" in rows["bad-utf8"]["error"]
    for doc_id, _, _ in SAMPLE_TEXTS:
        assert rows[doc_id]["status"] == "ok" and rows[doc_id]["error"] is None
        assert rows[doc_id]["attention_influence"] is not None
    assert len({r["scorer"] for r in rows.values()}) == 1


def test_influence_formula_and_token_arrays(spark, scored_once):
    output, _ = scored_once
    for row in spark.read.format("delta").load(output).where("status = 'ok'").collect():
        assert row["attention_influence"] == pytest.approx(
            (row["loss_masked"] - row["loss_full"]) / row["loss_full"], rel=1e-12)
        windows = math.ceil(row["n_tokens"] / MAX_SEQ_LEN)
        predicted = row["n_tokens"] - windows  # a trailing one-token window predicts nothing
        assert len(row["token_loss_full"]) == len(row["token_loss_masked"]) == predicted
        assert sum(row["token_loss_full"]) / predicted == pytest.approx(row["loss_full"], abs=1e-5)


def test_scores_equal_the_core_whatever_the_partitioning(spark, corpus, scored_once, fixture_model, heads,
                                                          tmp_path):
    output, heads_file = scored_once
    first = {r["id"]: r for r in spark.read.format("delta").load(output).where("status = 'ok'").collect()}
    reference = dict(zip([d for d, _, _ in SAMPLE_TEXTS],
                         reference_scores(fixture_model, heads, [t for _, _, t in SAMPLE_TEXTS])))
    other = str(tmp_path / "scored")
    code, _ = run_job(score, ["--input", corpus, "--output", other, "--model", fixture_model, "--heads", heads_file,
                              "--max-seq-len", MAX_SEQ_LEN, "--max-chars", 5000, "--partitions", 3,
                              "--arrow-batch-size", 2, "--batch-tokens", 64, "--no-fused"])
    assert code == 0
    second = {r["id"]: r for r in spark.read.format("delta").load(other).where("status = 'ok'").collect()}
    assert sorted(first) == sorted(second) == sorted(reference)
    for doc_id, expected in reference.items():
        for rows in (first, second):
            assert rows[doc_id]["n_tokens"] == expected.n_tokens
            assert rows[doc_id]["loss_full"] == pytest.approx(expected.loss_full, abs=1e-5)
            assert rows[doc_id]["loss_masked"] == pytest.approx(expected.loss_masked, abs=1e-5)


def test_incremental_reruns(spark, tmp_path, fixture_model, heads, capsys):
    from delta.tables import DeltaTable

    corpus = write_docs(spark, SAMPLE_TEXTS[:6], tmp_path / "docs")
    output = str(tmp_path / "scored")
    argv = ["--input", corpus, "--output", output, "--model", fixture_model,
            "--heads", write_heads(tmp_path / "heads.json", heads), "--max-seq-len", MAX_SEQ_LEN]
    assert run_job(score, argv)[0] == 0
    version = DeltaTable.forPath(spark, output).history(1).first()["version"]
    first = {r["id"]: r["scored_at"] for r in spark.read.format("delta").load(output).collect()}

    # rerun with nothing new: no commit, nothing rescored
    code, out = run_job(score, argv, capsys)
    assert code == 0 and "scored 0 documents" in out.out
    assert DeltaTable.forPath(spark, output).history(1).first()["version"] == version

    # new ids are scored once, old rows untouched, with one MERGE
    write_docs(spark, SAMPLE_TEXTS, tmp_path / "docs")
    code, out = run_job(score, argv, capsys)
    assert code == 0 and "scored 4 documents" in out.out
    table = spark.read.format("delta").load(output)
    assert table.count() == len(SAMPLE_TEXTS) == table.select("id").distinct().count()
    after = {r["id"]: r["scored_at"] for r in table.collect()}
    assert all(after[i] == first[i] for i in first)
    last = DeltaTable.forPath(spark, output).history(1).first()
    assert last["version"] == version + 1 and last["operation"] == "MERGE"

    # a run killed midway leaves either nothing or a partial table; rerun ends with each id once
    spark.read.format("delta").load(output).where("id LIKE 'code%'").write.format("delta") \
        .mode("overwrite").save(output)
    assert run_job(score, argv)[0] == 0
    table = spark.read.format("delta").load(output)
    assert table.count() == len(SAMPLE_TEXTS) == table.select("id").distinct().count()


def test_changed_scorer_rescores_in_place(spark, tmp_path, fixture_model, heads):
    from spark_jobs.tables import table_properties

    corpus = write_docs(spark, SAMPLE_TEXTS[:3], tmp_path / "docs")
    output = str(tmp_path / "scored")
    options = score.options(input=corpus, output=output, model=fixture_model,
                            heads=write_heads(tmp_path / "heads.json", heads), max_seq_len=MAX_SEQ_LEN)
    first = score.run(spark, options)
    second = score.run(spark, replace(options, max_seq_len=MAX_SEQ_LEN * 2))
    assert first.by_status == second.by_status == {"ok": 3} and first.fingerprint != second.fingerprint
    table = spark.read.format("delta").load(output)
    assert table.count() == 3 and {r["scorer"] for r in table.collect()} == {second.fingerprint}
    props = table_properties(spark, output)
    assert props[table_contract.SCORER] == second.fingerprint
    assert f'"max_seq_len":{MAX_SEQ_LEN * 2}' in props[table_contract.SCORER_CONFIG]
    assert (props[table_contract.ID_COL], props[table_contract.DOMAIN_COL]) == ("id", "domain")


def test_masking_mode_is_part_of_the_scorer(spark, tmp_path, fixture_model, heads):
    """zero-output, then the default (uniform) into the same table: rescored in place, both recorded."""
    from spark_jobs.tables import table_properties

    docs = SAMPLE_TEXTS[:3]
    corpus = write_docs(spark, docs, tmp_path / "docs")
    output = str(tmp_path / "scored")
    options = score.options(input=corpus, output=output, model=fixture_model,
                            heads=write_heads(tmp_path / "heads.json", heads), max_seq_len=MAX_SEQ_LEN)
    assert options.masking == "uniform"  # the default
    runs = {}
    for masking in ("zero-output", "uniform"):
        summary = score.run(spark, replace(options, masking=masking))
        table = spark.read.format("delta").load(output)
        assert table.count() == len(docs) and {r["scorer"] for r in table.collect()} == {summary.fingerprint}
        props = table_properties(spark, output)
        assert f'"masking":"{masking}"' in props[table_contract.SCORER_CONFIG]
        assert props[table_contract.SCORER] == summary.fingerprint
        runs[masking] = {r["id"]: r for r in table.collect()}
        expected = reference_scores(fixture_model, heads, [t for _, _, t in docs], masking=masking)
        for (doc_id, _, _), reference in zip(docs, expected):
            assert runs[masking][doc_id]["loss_masked"] == pytest.approx(reference.loss_masked, abs=1e-5)
    uniform, zero_output = runs["uniform"], runs["zero-output"]
    assert {r["scorer"] for r in uniform.values()}.isdisjoint(r["scorer"] for r in zero_output.values())
    for doc_id, _, _ in docs:
        assert uniform[doc_id]["loss_full"] == pytest.approx(zero_output[doc_id]["loss_full"], abs=1e-6)
    assert any(abs(uniform[d]["loss_masked"] - zero_output[d]["loss_masked"]) > 1e-4 for d, _, _ in docs)


def test_overwrite_mode_replaces_the_table(spark, tmp_path, fixture_model, heads):
    output = str(tmp_path / "scored")
    big = write_docs(spark, SAMPLE_TEXTS, tmp_path / "big")
    small = write_docs(spark, SAMPLE_TEXTS[:2], tmp_path / "small")
    options = score.options(input=big, output=output, model=fixture_model,
                            heads=write_heads(tmp_path / "heads.json", heads), max_seq_len=MAX_SEQ_LEN)
    score.run(spark, options)
    assert score.run(spark, replace(options, input=small, mode="overwrite")).documents == 2
    ids = sorted(r["id"] for r in spark.read.format("delta").load(output).collect())
    assert ids == sorted(d for d, _, _ in SAMPLE_TEXTS[:2])


def test_a_handed_session_keeps_its_arrow_batch_size(spark, tmp_path, fixture_model, heads):
    """A notebook's session: the job's Arrow batch size holds while it scores, then the session's is back."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    options = score.options(input=write_docs(spark, SAMPLE_TEXTS[:2], tmp_path / "docs"),
                            output=str(tmp_path / "scored"), model=fixture_model,
                            heads=write_heads(tmp_path / "heads.json", heads), max_seq_len=MAX_SEQ_LEN,
                            arrow_batch_size=1)
    assert score.run(spark, options).by_status == {"ok": 2}
    assert spark.conf.get(key) == before != "1"


def test_input_columns_named_like_score_columns_are_refused(spark, tmp_path, fixture_model, heads, capsys):
    """Every column the table gets from the UDF or from score.py is refused as an input column."""
    from udfs.influence import SCORE_COLUMNS, TOKEN_LOSS_COLUMNS

    names = [name for name, _ in SCORE_COLUMNS + TOKEN_LOSS_COLUMNS] + list(table_contract.ADDED_COLUMNS)
    path = tmp_path / "docs"
    frame = spark.createDataFrame(SAMPLE_TEXTS[:1], "id STRING, domain STRING, text STRING")
    for name in names:
        frame = frame.withColumn(name, frame["id"])
    frame.write.format("delta").save(str(path))
    code, out = run_job(score, ["--input", path, "--output", tmp_path / "out", "--model", fixture_model,
                                "--heads", write_heads(tmp_path / "h.json", heads)], capsys)
    message = out.err.strip().splitlines()[-1]
    assert code == 2 and "clash with score columns" in message
    assert all(name in message for name in names)


def test_catalog_tables_and_custom_columns(spark, tmp_path, fixture_model, heads):
    spark.createDataFrame([(i, f"src{i % 2}", t) for i, (_, _, t) in enumerate(SAMPLE_TEXTS)],
                          "doc_id BIGINT, source STRING, body STRING") \
        .write.format("delta").mode("overwrite").saveAsTable("default.raw_docs")
    code, _ = run_job(score, ["--input", "default.raw_docs", "--output", "default.raw_docs_scored",
                              "--model", fixture_model, "--heads", write_heads(tmp_path / "heads.json", heads),
                              "--id-col", "doc_id", "--text-col", "body", "--domain-col", "source",
                              "--carry-cols", "doc_id,source", "--max-seq-len", MAX_SEQ_LEN])
    assert code == 0
    table = spark.table("default.raw_docs_scored")
    assert table.columns[:2] == ["doc_id", "source"] and "body" not in table.columns
    assert table.where("status = 'ok'").count() == len(SAMPLE_TEXTS)


@pytest.mark.parametrize("problem", ["duplicate", "missing-column", "null-id"])
def test_bad_input_is_refused_before_scoring(spark, tmp_path, fixture_model, heads, capsys, problem):
    rows = {"duplicate": SAMPLE_TEXTS[:3] + [SAMPLE_TEXTS[0]], "missing-column": SAMPLE_TEXTS[:3],
            "null-id": SAMPLE_TEXTS[:3] + [(None, "code", "x = 1")]}[problem]
    corpus = write_docs(spark, rows, tmp_path / "docs")
    output = tmp_path / "scored"
    text_col = "body" if problem == "missing-column" else "text"
    code, out = run_job(score, ["--input", corpus, "--output", output, "--model", fixture_model,
                                "--heads", write_heads(tmp_path / "heads.json", heads), "--text-col", text_col],
                        capsys)
    assert code == 2
    message = out.err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    assert {"duplicate": "duplicate ids", "missing-column": "no column(s) body", "null-id": "null ids"}[problem] \
        in message
    assert not output.exists()


def test_missing_input_table_is_one_line(spark, tmp_path, fixture_model, heads, capsys):
    code, out = run_job(score, ["--input", tmp_path / "nowhere", "--output", tmp_path / "out",
                                "--model", fixture_model, "--heads", write_heads(tmp_path / "h.json", heads)],
                        capsys)
    assert code == 2 and out.err.strip().splitlines()[-1].startswith("error: table not found")
