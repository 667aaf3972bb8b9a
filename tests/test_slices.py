"""score.py commits in slices (SPEC §3, bounded lost work): a sliced run equals a one-shot run, a stop
after a slice resumes where it left off, a stopped overwrite leaves the old table, SIGTERM ends a real
entry point with exit code 75, and --watch scores what is appended to (or rewritten in) its input.
The driver killed with kill -9 on a standalone cluster is in tests/test_cluster.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spark_jobs import score, slices
from spark_jobs.cli import STOPPED_EXIT, Stopped
from spark_jobs.scores_table import ScoresTable
from spark_jobs.tables import table_detail
from tests.conftest import REPO
from tests.helpers import write_docs, write_heads

pytestmark = pytest.mark.slow


def rows_of(n: int, start: int = 0):
    return [(f"doc-{i:03d}", ("code", "prose", "legal")[i % 3],
             f"Document {i}. " + "Permission is granted to use, copy and modify this text. " * (1 + i % 4))
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    return write_heads(tmp_path_factory.mktemp("heads") / "heads.json", [(1, 0), (1, 5)])


def options(docs, output, fixture_model, heads, **settings):
    return score.options(input=docs, output=str(output), model=fixture_model, heads=heads, max_seq_len=64,
                         **settings)


def scores(spark, output) -> dict[str, tuple]:
    return {r["id"]: (r["loss_full"], r["loss_masked"], r["attention_influence"], r["status"], r["scorer"])
            for r in spark.read.format("delta").load(str(output)).collect()}


def assert_same_scores(left: dict, right: dict):
    assert sorted(left) == sorted(right)
    for key in left:
        assert left[key][3:] == right[key][3:], key
        for a, b in zip(left[key][:3], right[key][:3]):
            assert a == pytest.approx(b, abs=1e-5), key


def stop_after_commits(monkeypatch, stop: slices.StopSignal, commits: int):
    """The next run asks for a stop (as SIGTERM does) once `commits` slices are committed."""
    real = ScoresTable.commit
    done = []

    def counting(table, scored, fresh=False):
        real(table, scored, fresh)
        done.append(1)
        if len(done) == commits:
            stop.request("test stop")

    monkeypatch.setattr(ScoresTable, "commit", counting)


def test_sliced_run_equals_one_shot_and_is_compacted(spark, tmp_path, fixture_model, heads, capsys):
    docs = write_docs(spark, rows_of(24), tmp_path / "docs")
    one_shot = score.run(spark, options(docs, tmp_path / "one-shot", fixture_model, heads, slice_documents=1000))
    assert one_shot.slices == 1
    capsys.readouterr()
    sliced = score.run(spark, options(docs, tmp_path / "sliced", fixture_model, heads, slice_documents=2))
    err = capsys.readouterr().err
    assert sliced.slices > score.COMPACT_AFTER_SLICES and sliced.documents == 24
    assert re.search(r"slice 3: \d+ documents, \d+ tokens in [\d.]+s \(\d+ tokens/s\), committed; "
                     r"total committed \d+/24 \(\d+%\)", err)
    sizes = [int(n) for n in re.findall(r"slice \d+: (\d+) documents, \d+ tokens in", err)]
    assert sum(sizes) == 24 and max(sizes) <= 8  # about 2 each: a hash bucket of what is left
    assert_same_scores(scores(spark, tmp_path / "sliced"), scores(spark, tmp_path / "one-shot"))
    assert "compacted " in err
    files = {name: table_detail(spark, str(tmp_path / name))["numFiles"] for name in ("one-shot", "sliced")}
    assert files["sliced"] <= 2 * files["one-shot"], files


def test_a_stopped_run_resumes_with_what_is_left(spark, tmp_path, fixture_model, heads, monkeypatch, capsys):
    docs = write_docs(spark, rows_of(12), tmp_path / "docs")
    output = tmp_path / "scored"
    stop = slices.StopSignal()
    stop_after_commits(monkeypatch, stop, 2)
    with pytest.raises(Stopped, match=r"after the slice in flight: 2 slice\(s\) committed in this run"):
        score.run(spark, options(docs, output, fixture_model, heads, slice_documents=3), stop=stop)
    committed = spark.read.format("delta").load(str(output)).count()
    assert 2 <= committed < 12
    capsys.readouterr()

    monkeypatch.undo()
    resumed = score.run(spark, options(docs, output, fixture_model, heads, slice_documents=3))
    err = capsys.readouterr().err
    assert resumed.committed_before == committed and resumed.documents == 12 - committed
    assert f"{committed} of 12 documents already committed for this scorer" in err
    ids = [r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect()]
    assert sorted(ids) == sorted(r[0] for r in rows_of(12))


def test_a_stopped_overwrite_leaves_the_old_table_then_replaces_it(spark, tmp_path, fixture_model, heads,
                                                                    monkeypatch):
    output = tmp_path / "scored"
    old = write_docs(spark, rows_of(4), tmp_path / "old")
    score.run(spark, options(old, output, fixture_model, heads))
    version = spark.sql(f"DESCRIBE HISTORY delta.`{output}`").first()["version"]
    before = scores(spark, output)

    docs = write_docs(spark, rows_of(10, start=100), tmp_path / "docs")
    stop = slices.StopSignal()
    stop_after_commits(monkeypatch, stop, 1)
    with pytest.raises(Stopped):
        score.run(spark, options(docs, output, fixture_model, heads, mode="overwrite", slice_documents=3), stop=stop)
    assert spark.sql(f"DESCRIBE HISTORY delta.`{output}`").first()["version"] == version  # untouched
    assert scores(spark, output) == before
    state = tmp_path / "_attention_influence_state" / "scored"
    staging = [p for p in state.iterdir() if p.name.endswith("-staging")]
    assert len(staging) == 1 and 1 <= spark.read.format("delta").load(str(staging[0])).count() < 10

    monkeypatch.undo()
    done = score.run(spark, options(docs, output, fixture_model, heads, mode="overwrite", slice_documents=3))
    assert done.committed_before >= 1 and done.committed_before + done.documents == 10  # resumed from staging
    assert spark.sql(f"DESCRIBE HISTORY delta.`{output}`").first()["version"] == version + 1  # one replace
    assert sorted(scores(spark, output)) == sorted(r[0] for r in rows_of(10, start=100))
    assert not staging[0].exists()


# ---------------------------------------------------------------- the real entry point, in its own process

def start_score(args, log: Path) -> subprocess.Popen:
    env = dict(os.environ, ATTENTION_INFLUENCE_PROGRESS_SECONDS="60")
    return subprocess.Popen([sys.executable, str(REPO / "spark_jobs" / "score.py"), *map(str, args)], cwd=REPO,
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(predicate, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"score.py ended ({process.returncode}) before {what}: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f": {log.read_text()[-3000:]}" if log else ""))


def count_of(spark, output) -> int:
    try:
        return spark.read.format("delta").load(str(output)).count()
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_sigterm_commits_the_slice_in_flight_and_exits_75(spark, tmp_path, fixture_model, heads):
    docs = write_docs(spark, rows_of(16), tmp_path / "docs")
    output = tmp_path / "scored"
    log = tmp_path / "score.log"
    flags = ["--input", docs, "--output", output, "--model", fixture_model, "--heads", heads, "--max-seq-len", 64,
             "--slice-documents", 2]
    process = start_score(flags, log)
    try:
        wait_for(lambda: "slice 1: " in log.read_text() and "committed" in log.read_text(), 600, "a committed slice",
                 process, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(300) == STOPPED_EXIT, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log.read_text()
    assert "SIGTERM: stopping after the slice in flight is committed" in text
    assert text.strip().splitlines()[-1].startswith("stopped: stopped on request after the slice in flight")
    committed = count_of(spark, output)
    reported = int(re.search(r"(\d+) of 16 documents committed for this scorer", text)[1])
    assert committed == reported and 1 <= committed < 16

    resumed = score.run(spark, options(docs, output, fixture_model, heads, slice_documents=8))
    assert resumed.committed_before == committed and resumed.documents == 16 - committed
    ids = [r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect()]
    assert sorted(ids) == sorted(r[0] for r in rows_of(16))


def test_watch_scores_appends_and_rewrites_until_sigterm(spark, tmp_path, fixture_model, heads):
    docs = write_docs(spark, rows_of(4), tmp_path / "docs")
    output = tmp_path / "scored"
    log = tmp_path / "watch.log"
    process = start_score(["--input", docs, "--output", output, "--model", fixture_model, "--heads", heads,
                           "--max-seq-len", 64, "--slice-documents", 4, "--watch", "--watch-interval", 1], log)
    try:
        wait_for(lambda: count_of(spark, output) == 4, 600, "the first 4 documents", process, log)
        spark.createDataFrame(rows_of(3, start=4), "id STRING, domain STRING, text STRING") \
            .write.format("delta").mode("append").save(docs)
        wait_for(lambda: count_of(spark, output) == 7, 300, "the 3 appended documents", process, log)
        # An overwrite of the input (2 new ids, 2 of the old ones): the new ids are scored, old scores stay.
        write_docs(spark, rows_of(2, start=2) + rows_of(2, start=50), docs)
        wait_for(lambda: count_of(spark, output) == 9, 300, "the rewritten input's new ids", process, log)
        assert "was rewritten at version(s)" in log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(300) == STOPPED_EXIT, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    ids = sorted(r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect())
    assert ids == sorted({r[0] for r in rows_of(7) + rows_of(2, start=50)})
    assert log.read_text().strip().splitlines()[-1].startswith("stopped: ")


# ---------------------------------------------------------------- slices that do not read the output

def write_files(spark, rows, path, files: int) -> str:
    """Documents as `files` data files, so the stream cuts micro-batches by file as on a real table."""
    from tests.helpers import DOCS_DDL

    spark.createDataFrame(rows, DOCS_DDL).repartition(files).write.format("delta").save(str(path))
    return str(path)


def commits(spark, output) -> list:
    return spark.sql(f"DESCRIBE HISTORY delta.`{output}`").orderBy("version").collect()


def test_fresh_slices_are_appended_as_transactions_of_the_scorer(spark, tmp_path, fixture_model, heads):
    """The first slice is MERGEd; the slices after it, whose input files held nothing committed, are
    appended (no anti-join, no MERGE) as Delta transactions of this scorer's app with rising versions.
    The table equals a one-shot run, each id once."""
    import json

    docs = write_files(spark, rows_of(24), tmp_path / "docs", 6)
    sliced = score.run(spark, options(docs, tmp_path / "sliced", fixture_model, heads, slice_documents=4))
    one_shot = score.run(spark, options(docs, tmp_path / "one-shot", fixture_model, heads, slice_documents=1000))
    assert sliced.slices >= 5 and one_shot.slices == 1
    history = commits(spark, tmp_path / "sliced")
    operations = [c["operation"] for c in history]
    assert operations.count("MERGE") >= 1 and operations.count("WRITE") >= 4, operations
    tagged = [json.loads(c["userMetadata"]) for c in history if c["userMetadata"]]
    versions = [t["txn"] for t in tagged]
    assert len(tagged) == sliced.slices and versions == sorted(set(versions))
    assert_same_scores(scores(spark, tmp_path / "sliced"), scores(spark, tmp_path / "one-shot"))


def rival_commit(spark, table: ScoresTable, rows) -> None:
    """Another writer of the same scorer: its own ScoresTable, MERGEing `rows` into the run's table."""
    rival = ScoresTable(spark, table.ref, table.fingerprint, table.id_col)
    rival.is_rival = True
    rival.open_slices(rival.version(), replaces_rows=False)
    rival.commit(rows.localCheckpoint())


def with_rival_after(monkeypatch, commits_before: int, rival):
    """score.run's commits, with `rival(spark, table)` run once after our `commits_before`-th commit."""
    real = ScoresTable.commit
    done = []

    def commit_then_rival(table, scored, fresh=False):
        real(table, scored, fresh)
        if getattr(table, "is_rival", False):
            return
        done.append(1)
        if len(done) == commits_before:
            rival(table.spark, table)

    monkeypatch.setattr(ScoresTable, "commit", commit_then_rival)


def test_a_rival_writers_commit_ends_the_appends(spark, tmp_path, fixture_model, heads, monkeypatch, capsys):
    """A second writer of this scorer commits every document (marked) after our second slice: our next
    append does not land (Delta's transaction check), the run MERGEs from then on, and every id is in the
    table once, the rival's rows untouched."""
    from pyspark.sql import functions as F

    docs = write_files(spark, rows_of(24), tmp_path / "docs", 6)
    score.run(spark, options(docs, tmp_path / "rival", fixture_model, heads, slice_documents=1000))
    marked = spark.read.format("delta").load(str(tmp_path / "rival")).withColumn("loss_full", F.lit(-1.0))
    with_rival_after(monkeypatch, 2, lambda spark_, table: rival_commit(spark_, table, marked))
    capsys.readouterr()
    score.run(spark, options(docs, tmp_path / "scored", fixture_model, heads, slice_documents=4))
    err = capsys.readouterr().err
    assert "from now on every slice is checked against the table and MERGEd" in err
    rows = spark.read.format("delta").load(str(tmp_path / "scored")).collect()
    assert sorted(r["id"] for r in rows) == sorted(r[0] for r in rows_of(24))
    ours = [r for r in rows if r["loss_full"] != -1.0]
    assert 2 <= len(ours) < 24  # what we committed before the rival; the rest is the rival's


def test_another_writers_rows_end_the_appends(spark, tmp_path, fixture_model, heads, monkeypatch, capsys):
    """A writer that is not score.py (a plain INSERT of other ids) between two slices: found in the
    history after our next commit; the run MERGEs from then on; each id once."""
    docs = write_files(spark, rows_of(24), tmp_path / "docs", 6)
    output = tmp_path / "scored"

    def insert_others(spark_, table):
        spark_.sql(f"INSERT INTO delta.`{table.ref}` BY NAME SELECT 'other-' || id AS id, domain, text, n_tokens, "
                   f"loss_full, loss_masked, attention_influence, status, error, scorer, scored_at "
                   f"FROM delta.`{table.ref}`")

    with_rival_after(monkeypatch, 2, insert_others)
    capsys.readouterr()
    summary = score.run(spark, options(docs, output, fixture_model, heads, slice_documents=4))
    assert "another writer added rows to it" in capsys.readouterr().err
    ids = [r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect()]
    ours = sorted(i for i in ids if not i.startswith("other-"))
    assert ours == sorted(r[0] for r in rows_of(24)) and summary.documents == 24
    assert len(ids) == len(set(ids))


def test_a_lost_checkpoint_rereads_what_was_committed(spark, tmp_path, fixture_model, heads, monkeypatch, capsys):
    """A run stopped after two slices whose stream checkpoint is then lost: the rerun's stream hands out
    every file again; files that held committed documents are checked by the anti-join (not appended),
    the others appended; each id once."""
    import shutil

    docs = write_files(spark, rows_of(24), tmp_path / "docs", 6)
    output = tmp_path / "scored"
    stop = slices.StopSignal()
    stop_after_commits(monkeypatch, stop, 2)
    with pytest.raises(Stopped):
        score.run(spark, options(docs, output, fixture_model, heads, slice_documents=4), stop=stop)
    committed = spark.read.format("delta").load(str(output)).count()
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "_attention_influence_state")
    resumed = score.run(spark, options(docs, output, fixture_model, heads, slice_documents=4))
    assert resumed.committed_before == committed and resumed.documents == 24 - committed
    ids = [r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect()]
    assert sorted(ids) == sorted(r[0] for r in rows_of(24))
