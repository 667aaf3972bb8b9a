"""score.py on a real Spark standalone cluster (scripts/cluster.sh: a master and two workers, each
its own JVM, one placeholder GPU each), submitted with spark-submit as docs/cluster.md says, and the
faults of issue 8: a lost executor, a lost Python worker, a document that kills its worker every
time, a killed driver, two concurrent writers; plus --retry-errors and the commit retry (local).

The executors run this machine's project interpreter (PYSPARK_PYTHON = the venv's python: the
honest choice for a cluster on one host) and get the job's code only from the --py-files zip (the
cluster is started without PYTHONPATH; the task records name the file they ran from).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from spark_jobs import score, scores_table
from spark_jobs.scores_table import ScoresTable
from tests.conftest import FIXTURE_MODEL, REPO
from tests.helpers import run_job, write_docs, write_heads

pytestmark = pytest.mark.slow

SPARK_HOME = Path(__import__("pyspark").__file__).parent
TASK_RECORD = re.compile(r"\[attention-influence\] task stage=(\d+) partition=(\d+) attempt=(\d+) "
                         r"gpu_addresses=(\[[^\]]*\]) pid=(\d+) code=(\S+)")
N_DOCS = 40


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_port_run(start: int, length: int) -> int:
    for base in range(start, start + 2000):
        if all(_free(p) for p in range(base, base + length)):
            return base
    raise RuntimeError("no free ports")


def package(target: Path) -> Path:
    """dist/attention_influence_jobs.zip as `make package` builds it."""
    with zipfile.ZipFile(target, "w") as z:
        for folder in ("attention_influence", "demo", "udfs", "spark_jobs"):
            for p in sorted((REPO / folder).rglob("*")):
                if "__pycache__" not in p.parts:
                    z.write(p, p.relative_to(REPO))
    return target


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "cluster"
        port = 7077 if _free(7077) else _free_port_run(17077, 1)  # SPEC's port unless a cluster holds it
        self.env = dict(os.environ, PY=sys.executable, CLUSTER_DIR=str(self.dir), CLUSTER_MASTER_PORT=str(port),
                        CLUSTER_UI_PORT=str(_free_port_run(18080, 3)))
        self.master = f"spark://127.0.0.1:{port}"
        self.zip = package(root / "attention_influence_jobs.zip")
        self.processes: list[subprocess.Popen] = []

    def script(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(REPO / "scripts" / "cluster.sh"), action], env=self.env, capture_output=True,
                              text=True, timeout=240)

    def submit_command(self, job_args, fault: str | None = None, conf: dict | None = None):
        command = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", self.master,
                   "--properties-file", str(REPO / "conf" / "spark" / "standalone.conf"),
                   "--py-files", str(self.zip)]
        for key, value in dict(conf or {}, **({"spark.executorEnv.ATTENTION_INFLUENCE_TEST_FAULT": fault}
                                              if fault else {})).items():
            command += ["--conf", f"{key}={value}"]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_GATEWAY_PORT")}
        env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
        return command + [str(REPO / "spark_jobs" / "score.py")] + [str(a) for a in job_args], env

    def submit(self, job_args, fault=None, conf=None, log: Path | None = None) -> subprocess.Popen:
        """spark-submit in its own process group (so the test can kill the whole driver)."""
        command, env = self.submit_command(job_args, fault, conf)
        log = log or self.root / f"submit-{uuid.uuid4().hex[:8]}.log"
        out = open(log, "w")
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, text=True)
        process.log = log
        self.processes.append(process)
        return process

    def run(self, job_args, fault=None, conf=None, timeout=1200):
        process = self.submit(job_args, fault, conf)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        return process.returncode, process.log.read_text()

    def executor_logs(self, app_id: str) -> dict[Path, str]:
        """stderr of each executor of the app, by executor directory (work1/<app>/<id>/...)."""
        return {p.parent: p.read_text(errors="replace") for p in sorted(self.dir.glob(f"work*/{app_id}/*/stderr"))}

    def task_records(self, app_id: str) -> list[dict]:
        records = []
        for folder, text in self.executor_logs(app_id).items():
            for m in TASK_RECORD.finditer(text):
                records.append({"worker": folder.parent.parent.name, "executor": folder.name, "stage": int(m[1]),
                                "partition": int(m[2]), "attempt": int(m[3]), "gpus": json.loads(m[4]),
                                "pid": int(m[5]), "code": m[6]})
        return records


def app_id_of(log_text: str) -> str:
    match = re.search(r"app ID (app-\d+-\d+)", log_text)
    assert match, log_text[-3000:]
    return match.group(1)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("standalone")
    cl = Cluster(root)
    started = cl.script("start")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        again = cl.script("start")  # a second cluster is refused
        assert again.returncode != 0 and "already running" in again.stderr
        yield cl
    finally:
        for process in cl.processes:  # a driver a failed test left running
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        stopped = cl.script("stop")
        assert "stopped" in stopped.stdout
        for role in ("master", "worker1", "worker2"):
            assert not (cl.dir / f"{role}.pid").exists()


@pytest.fixture(scope="module")
def docs(spark, tmp_path_factory):
    """40 short documents of three domains, one holding a fault marker (inert without the test hook)."""
    marker = "fault-marker-" + uuid.uuid4().hex  # 45 characters
    rows = [(f"doc-{i:03d}", ("code", "prose", "legal")[i % 3],
             f"Document {i}. " + "Redistribution and use in source and binary forms are permitted. " * (1 + i % 3))
            for i in range(N_DOCS)]
    rows[7] = (rows[7][0], rows[7][1], rows[7][2] + " " + marker)
    root = tmp_path_factory.mktemp("cluster-docs")
    path = write_docs(spark, rows, root / "docs")
    heads = write_heads(root / "heads.json", [(1, 0), (1, 5)])
    return {"path": path, "heads": heads, "marker": marker, "ids": sorted(r[0] for r in rows), "rows": rows}


def job(docs, output, *extra, input_path=None):
    return ["--input", input_path or docs["path"], "--output", output, "--model", FIXTURE_MODEL,
            "--heads", docs["heads"], "--max-seq-len", 64, *extra]


def ids_of(spark, output) -> list[str]:
    return sorted(r["id"] for r in spark.read.format("delta").load(str(output)).select("id").collect())


def rows_in(spark, output) -> int:
    """Rows of a table another process is writing: 0 until its first commit is readable."""
    try:
        return spark.read.format("delta").load(str(output)).count()
    except Exception:  # noqa: BLE001 - no table, or no commit yet
        return 0


def assert_each_id_once(spark, output, expected):
    ids = ids_of(spark, output)
    assert ids == sorted(expected), (len(ids), len(set(ids)), len(expected))


# ---------------------------------------------------------------- on the standalone cluster

def test_scores_with_one_gpu_per_task(cluster, docs, spark, tmp_path):
    output = tmp_path / "scored"
    code, log = cluster.run(job(docs, output, "--partitions", 8))
    assert code == 0, log[-4000:]
    assert_each_id_once(spark, output, docs["ids"])
    assert {r["status"] for r in spark.read.format("delta").load(str(output)).collect()} == {"ok"}

    records = cluster.task_records(app_id_of(log))
    assert len({r["partition"] for r in records}) >= 8
    assert all(len(r["gpus"]) == 1 for r in records)  # each scoring task: exactly one GPU from Spark
    assert {r["gpus"][0] for r in records} == {"0", "1"}  # both workers' GPUs were used
    by_worker = {w: {r["gpus"][0] for r in records if r["worker"] == w} for w in ("work1", "work2")}
    assert by_worker == {"work1": {"0"}, "work2": {"1"}}  # each worker hands out its own address
    assert all("attention_influence_jobs.zip" in r["code"] for r in records)  # code from --py-files
    if not __import__("torch").cuda.is_available():  # placeholder GPUs: said once per Python worker
        for folder, text in cluster.executor_logs(app_id_of(log)).items():
            pids = {r["pid"] for r in records if r["executor"] == folder.name and r["worker"] == folder.parent.parent.name}
            assert text.count("CUDA is not available here") == len(pids)


def test_lost_executor_is_rescheduled(cluster, docs, spark, tmp_path):
    """kill -9 of worker 1's executor JVM while scoring tasks run: the job finishes, each id once."""
    output = tmp_path / "scored"
    process = cluster.submit(job(docs, output, "--partitions", 12), fault="sleep:4")
    app_id = wait_for(lambda: re.search(r"app ID (app-\d+-\d+)", process.log.read_text()), 600, "the app")[1]
    wait_for(lambda: any(r["worker"] == "work1" for r in cluster.task_records(app_id)), 600, "a task on worker 1")
    executor_dir = next(cluster.dir.glob(f"work1/{app_id}/*"))
    victim = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _cwd(p) == executor_dir.resolve()
                  and b"CoarseGrainedExecutorBackend" in _cmdline(p))
    os.kill(victim, signal.SIGKILL)
    assert process.wait(900) == 0, process.log.read_text()[-4000:]
    assert_each_id_once(spark, output, docs["ids"])
    assert re.search(r"Lost executor|Executor .* exited|ExecutorLostFailure|exited with code 137",
                     process.log.read_text() + (cluster.dir / "worker1.log").read_text())


def _cwd(proc: Path):
    try:
        return Path(os.readlink(proc / "cwd")).resolve()
    except OSError:
        return None


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_lost_python_worker_task_is_retried(cluster, docs, spark, tmp_path):
    """The Python worker holding the marked document exits on the task's first attempt only."""
    output = tmp_path / "scored"
    code, log = cluster.run(job(docs, output, "--partitions", 8), fault=f"exit-once:{docs['marker']}")
    assert code == 0, log[-4000:]
    assert_each_id_once(spark, output, docs["ids"])
    assert {r["status"] for r in spark.read.format("delta").load(str(output)).collect()} == {"ok"}
    app_id = app_id_of(log)
    assert "test fault exit-once" in "".join(cluster.executor_logs(app_id).values())
    assert any(r["attempt"] == 1 for r in cluster.task_records(app_id))


def test_document_that_kills_every_attempt_fails_the_job(cluster, docs, spark, tmp_path):
    """Spark's retry model has no per-row fallback after a crash: the task fails maxFailures times,
    the job aborts with one line naming the partition, and nothing of that slice is committed."""
    output = tmp_path / "scored"
    code, log = cluster.run(job(docs, output, "--partitions", 8), fault=f"exit-always:{docs['marker']}",
                            conf={"spark.task.maxFailures": 2})
    assert code == 1, log[-4000:]
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in log, log[-4000:]
    match = re.fullmatch(r"error: scoring task for partition (\d+) \(stage (\d+)\.\d+\) failed 2 times; .*", errors[0])
    assert match, errors[0]
    crashed = {r["partition"] for r in cluster.task_records(app_id_of(log)) if r["stage"] == int(match[2])
               and r["attempt"] == 1}
    assert crashed == {int(match[1])}
    assert spark.read.format("delta").load(str(output)).count() == 0  # one slice (the default), not committed


def test_driver_killed_loses_at_most_the_slice_in_flight(cluster, docs, spark, tmp_path, capsys):
    """kill -9 of the driver once at least half the slices are committed: the rerun scores exactly
    what was not committed (counted in the table before it and in its own report), and the table
    ends equal to a one-shot run of the same input."""
    output = tmp_path / "scored"
    # Each task sleeps 1 s first, so a slice of 4 documents takes a few seconds and the kill lands mid-run.
    process = cluster.submit(job(docs, output, "--slice-documents", 4), fault="sleep:1")
    try:
        wait_for(lambda: process.poll() is None and rows_in(spark, output) >= N_DOCS // 2, 900, "half the slices")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver: spark-submit's JVM and its Python
        process.wait(60)
    log = process.log.read_text()
    committed = ids_of(spark, output)
    assert len(set(committed)) == len(committed)  # each id once, even in a table a killed run left
    assert N_DOCS // 2 <= len(committed) < N_DOCS, len(committed)
    slices_seen = len(re.findall(r"slice \d+: \d+ documents, .* committed", log))
    assert slices_seen >= 3, log[-3000:]

    code, captured = run_job(score, job(docs, output), capsys)  # the rerun, on local Spark: same scorer
    assert code == 0
    assert f"{len(committed)} of {N_DOCS} documents already committed for this scorer" in captured.err
    assert f"scored {N_DOCS - len(committed)} documents" in captured.out
    assert_each_id_once(spark, output, docs["ids"])
    # a slice is one commit: a MERGE, or an append of a fresh slice (spark_jobs/scores_table.py)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{output}`").where("operation IN ('MERGE', 'WRITE')").count()
    assert history >= slices_seen + 1

    one_shot = tmp_path / "one-shot"
    assert run_job(score, job(docs, one_shot, "--slice-documents", 1000))[0] == 0
    left = {r["id"]: r for r in spark.read.format("delta").load(str(output)).collect()}
    right = {r["id"]: r for r in spark.read.format("delta").load(str(one_shot)).collect()}
    for key, row in right.items():
        for column in ("loss_full", "loss_masked", "attention_influence"):
            if row[column] is not None:
                assert left[key][column] == pytest.approx(row[column], abs=1e-5), (key, column)
        assert left[key]["status"] == row["status"]


def test_two_writers_at_once(cluster, docs, spark, tmp_path):
    """Two score.py runs MERGE overlapping inputs into one table at the same time (one core each):
    Delta lets one commit first, the other retries its commit; each id once, none lost."""
    output = tmp_path / "scored"
    ids = docs["ids"]
    seed = write_docs(spark, [r for r in docs["rows"] if r[0] in ids[:4]], tmp_path / "seed")
    assert run_job(score, job(docs, output, input_path=seed))[0] == 0
    first = write_docs(spark, [r for r in docs["rows"] if r[0] in ids[:28]], tmp_path / "first")
    second = write_docs(spark, [r for r in docs["rows"] if r[0] in ids[12:]], tmp_path / "second")
    one_core = {"spark.cores.max": 1}
    writers = [cluster.submit(job(docs, output, "--partitions", 2, input_path=p), conf=one_core) for p in (first, second)]
    codes = [w.wait(1200) for w in writers]
    logs = [w.log.read_text() for w in writers]
    assert codes == [0, 0], [log[-3000:] for log in logs]
    assert_each_id_once(spark, output, ids)
    conflicts = sum("commit conflict on" in log for log in logs)
    print(f"writers that retried their commit: {conflicts}")


# ---------------------------------------------------------------- local session

def test_stage_failure_reason_names_the_partition():
    message = ("An error occurred while calling o123.collectToPython.\n: org.apache.spark.SparkException: Job aborted "
               "due to stage failure: Task 5 in stage 19.0 failed 4 times, most recent failure: Lost task 5.3 in "
               "stage 19.0 (TID 40) (127.0.0.1 executor 1): org.apache.spark.SparkException: Python worker exited "
               "unexpectedly (crashed)\n\tat org.apache.spark.api.python.BasePythonRunner")
    assert score.task_failure_line(RuntimeError(message)) == (
        "scoring task for partition 5 (stage 19.0) failed 4 times; the run was aborted; slices committed before it "
        "stay, this slice was not committed (rerun to resume): "
        "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)")
    assert score.task_failure_line(RuntimeError("table not found")) is None


def test_commit_conflict_is_retried_then_exit_3(spark, docs, tmp_path, monkeypatch, capsys):
    """Delta's conflict exceptions are retried (the MERGE re-reads the table); after
    --commit-attempts lost races the job ends with one line and exit code 3."""
    output = tmp_path / "scored"
    seed = write_docs(spark, docs["rows"][:3], tmp_path / "seed")
    assert run_job(score, job(docs, output, input_path=seed))[0] == 0
    more = write_docs(spark, docs["rows"][:6], tmp_path / "more")
    real_write = ScoresTable.merge
    calls = []

    class ConcurrentAppendException(Exception):
        pass

    def conflicting_write(table, scored, insert_only=False):
        calls.append(table.ref)
        if len(calls) == 1 or table.commit_attempts == 2:
            raise ConcurrentAppendException("[DELTA_CONCURRENT_APPEND] Files were added by a concurrent update.")
        return real_write(table, scored, insert_only)

    monkeypatch.setattr(ScoresTable, "merge", conflicting_write)
    monkeypatch.setattr(scores_table.time, "sleep", lambda s: None)
    code, captured = run_job(score, job(docs, output, input_path=more), capsys)
    assert code == 0 and "commit conflict on" in captured.err and len(calls) == 2
    assert_each_id_once(spark, output, [r[0] for r in docs["rows"][:6]])

    calls.clear()
    rows = docs["rows"][:9]
    code, captured = run_job(score, job(docs, output, "--commit-attempts", 2,
                                        input_path=write_docs(spark, rows, tmp_path / "even-more")), capsys)
    assert code == 3 and len(calls) == 2
    assert captured.err.strip().splitlines()[-1].startswith("error: ") and "conflicted 2 times" in captured.err
    assert_each_id_once(spark, output, [r[0] for r in docs["rows"][:6]])  # nothing of it committed


def test_retry_errors_rescores_error_rows(spark, docs, tmp_path, capsys):
    """Rows with status 'error' stay as they are on a rerun, and are rescored with --retry-errors."""
    output = tmp_path / "scored"
    rows = docs["rows"][:6]
    path = write_docs(spark, rows, tmp_path / "docs")
    assert run_job(score, job(docs, output, "--max-chars", 100, input_path=path))[0] == 0
    before = {r["id"]: r for r in spark.read.format("delta").load(str(output)).collect()}
    failed = sorted(i for i, r in before.items() if r["status"] == "error")
    assert failed and len(failed) < len(rows)  # the longer documents are over --max-chars

    assert run_job(score, job(docs, output, input_path=path))[0] == 0  # max_chars is not part of the scorer
    again = {r["id"]: r for r in spark.read.format("delta").load(str(output)).collect()}
    assert sorted(i for i, r in again.items() if r["status"] == "error") == failed

    assert run_job(score, job(docs, output, "--retry-errors", input_path=path))[0] == 0
    after = {r["id"]: r for r in spark.read.format("delta").load(str(output)).collect()}
    assert sorted(after) == sorted(r[0] for r in rows)
    assert all(after[i]["status"] == "ok" for i in failed)
    assert all(after[i]["scored_at"] == before[i]["scored_at"] for i in before if i not in failed)
