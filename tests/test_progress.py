"""The job's own progress (driver thread over accumulators), default partitions, and score.py --dry-run."""

from __future__ import annotations

import io
import re
import time

import pytest

from spark_jobs import score
from spark_jobs.progress import Progress
from tests.helpers import SAMPLE_TEXTS, run_job, write_docs, write_heads

pytestmark = pytest.mark.slow


def slow_count(counters):
    def fn(frames):
        for frame in frames:
            time.sleep(0.3)
            counters[0].add(len(frame))
            counters[1].add(int(frame["id"].sum()))
            yield frame
    return fn


def test_progress_lines_from_accumulators_and_the_thread_stops(spark):
    stream = io.StringIO()
    progress = Progress(spark, total_documents=40, interval=0.2, stream=stream)
    frame = spark.range(40).repartition(8).mapInPandas(slow_count(progress.counters), "id LONG")
    with progress:
        assert frame.count() == 40
        time.sleep(0.5)  # the last accumulator update reaches the driver with its task's end
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("progress: ") for line in lines)
    assert "40/40 documents (100%)" in lines[-1] and f"{sum(range(40))} tokens" in lines[-1]
    assert re.search(r"\d+ tokens/s", lines[-1])
    time.sleep(0.6)
    assert stream.getvalue().splitlines() == lines  # nothing after the block ended


def test_progress_stops_when_the_work_fails(spark):
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(spark, total_documents=3, interval=0.1, stream=stream) as progress:
            time.sleep(0.35)
            raise RuntimeError("job failed")
    assert not progress._thread.is_alive()
    assert "0/3 documents (0%)" in stream.getvalue()


def test_default_partitions_several_per_core_at_most_one_per_document(spark):
    cores = spark.sparkContext.defaultParallelism  # local[2] in the suite
    assert score.default_partitions(spark, 10_000) == score.TASKS_PER_SLOT * cores
    assert score.default_partitions(spark, 3) == 3
    assert score.default_partitions(spark, 0) == 1


def count_tokens(model, texts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    return sum(len(tokenizer(t)["input_ids"]) for t in texts)


def test_dry_run_writes_nothing_then_a_run_shows_progress(spark, tmp_path, fixture_model, capsys, monkeypatch):
    docs = write_docs(spark, SAMPLE_TEXTS[:6], tmp_path / "docs")
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    output = str(tmp_path / "scored")
    flags = ["--input", docs, "--output", output, "--model", fixture_model, "--heads", heads]

    code, out = run_job(score, flags + ["--dry-run"], capsys)
    assert code == 0
    assert not (tmp_path / "scored").exists()  # the output table is not created
    assert "documents: 6 in the input, 0 already scored by this scorer (skipped), 6 to score" in out.out
    expected = count_tokens(fixture_model, [t for _, _, t in SAMPLE_TEXTS[:6]])
    assert f"tokens: about {expected} " in out.out  # a sample of 64 covers all six: the estimate is exact
    assert "partitions: per slice, from the documents and cores/GPUs" in out.out
    assert "slices: about 5 minutes of work each" in out.out
    assert re.search(r"scorer ai1-[0-9a-f]{16} ", out.out)

    monkeypatch.setenv("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "0.2")
    code, out = run_job(score, flags, capsys)
    assert code == 0
    assert "6 documents to score, in slices of about 5 minutes of work" in out.err
    assert re.search(r"slice 1: \d/6 documents \(", out.err)  # the progress line while the slice runs
    assert "slice 1: 6 documents, " in out.err and "total committed 6/6 (100%)" in out.err
    version = spark.sql(f"DESCRIBE HISTORY delta.`{output}`").first()["version"]

    write_docs(spark, SAMPLE_TEXTS, tmp_path / "docs")  # four new documents
    code, out = run_job(score, flags + ["--dry-run"], capsys)
    assert code == 0
    assert f"documents: {len(SAMPLE_TEXTS)} in the input, 6 already scored by this scorer (skipped), 4 to score" \
        in out.out
    assert spark.sql(f"DESCRIBE HISTORY delta.`{output}`").first()["version"] == version  # unchanged
    assert spark.read.format("delta").load(output).count() == 6


def test_progress_moves_inside_a_single_long_task(spark, tmp_path, fixture_model, capsys, monkeypatch):
    """One task scores every document: the documents done rise while it runs (executor heartbeats carry
    the scoring operator's live output rows to the driver), not only when it ends."""
    import random

    rng = random.Random(0)
    words = [t for _, _, text in SAMPLE_TEXTS for t in text.split()]
    rows = [(f"doc-{i}", "web", " ".join(rng.choice(words) for _ in range(150))) for i in range(LONG_TASK_DOCUMENTS)]
    docs = write_docs(spark, rows, tmp_path / "docs")
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    monkeypatch.setenv("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "0.5")
    code, out = run_job(score, ["--input", docs, "--output", str(tmp_path / "scored"), "--model", fixture_model,
                                "--heads", heads, "--partitions", "1", "--slice-documents", "100000"], capsys)
    assert code == 0, out.err
    inside = [(int(m.group(1)), m.group(0)) for m in
              re.finditer(rf"slice 1: (\d+)/{LONG_TASK_DOCUMENTS} documents \(\d+%\), 0/1 tasks[^\n]*", out.err)]
    moving = sorted({done for done, _ in inside if 0 < done < LONG_TASK_DOCUMENTS})
    assert len(moving) >= 2, "progress lines while the one task ran:\n" + "\n".join(line for _, line in inside)
    assert any("documents/s" in line for done, line in inside if done)  # no task ended: no tokens/s yet
    assert f"slice 1: {LONG_TASK_DOCUMENTS} documents, " in out.err


LONG_TASK_DOCUMENTS = 720


def test_work_done_shows_inside_one_task_of_long_documents(spark, fixture_model):
    """One task of ~500 documents of ~1,000 tokens, windows of 128 tokens: a document is finished only
    when its last window is scored, near the end of the pool, so the work done (progress rows, counted
    live) must rise while the task runs; the output holds every document once and no progress row."""
    import random

    from spark_jobs.session import session_settings
    from udfs.influence import ScoringSettings, score_documents

    rng = random.Random(1)
    words = [t for _, _, text in SAMPLE_TEXTS for t in text.split()]
    rows = [(f"doc-{i}", " ".join(rng.choice(words) for _ in range(440))) for i in range(WORK_TASK_DOCUMENTS)]
    documents = spark.createDataFrame(rows, "id STRING, text STRING").repartition(1)
    settings = ScoringSettings(model=fixture_model, heads=((1, 0),), max_seq_len=128, dtype="float32",
                               text_col="text", carry_cols=("id",))
    stream = io.StringIO()
    progress = Progress(spark, WORK_TASK_DOCUMENTS, interval=0.5, stream=stream, label="slice 1")
    scored = score_documents(documents, settings, progress.counters)
    with session_settings(spark, progress.settings), progress:
        out = scored.collect()
        time.sleep(0.6)  # a last line after the task's accumulators arrived

    assert sorted(r["id"] for r in out) == sorted(i for i, _ in rows)
    assert {r["status"] for r in out} == {"ok"}
    tokens = sum(r["n_tokens"] for r in out)
    assert tokens > 900 * WORK_TASK_DOCUMENTS
    lines = stream.getvalue().splitlines()
    inside = [line for line in lines if ", 0/1 tasks, " in line]
    scored_shares = [int(m.group(1)) for line in inside for m in [re.search(r", (\d+)% scored, ", line)] if m]
    rises = sum(later > earlier for earlier, later in zip(scored_shares, scored_shares[1:]))
    assert rises >= 3, "progress lines while the one task ran:\n" + "\n".join(lines)
    assert all("ETA " in line for line in inside if "% scored" in line)
    assert f"{WORK_TASK_DOCUMENTS}/{WORK_TASK_DOCUMENTS} documents (100%), {tokens} tokens" in lines[-1]


WORK_TASK_DOCUMENTS = 500
