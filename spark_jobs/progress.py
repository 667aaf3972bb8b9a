"""The job's own progress, printed from the driver while Spark works.

Scoring is one Spark stage; its console bar counts tasks, which says little when a task runs for
minutes. A daemon thread prints one line every few seconds:

    slice 1: 40/90 documents (44%), about 18344 tokens, 3/8 tasks, 52% scored, 1530 tokens/s, ETA 33s

Where the numbers come from depends on the session:

* Classic: counted inside running tasks, from two SQL metrics that executor heartbeats carry to the
  driver's status store, where this thread reads them (Python accumulators reach the driver only
  when a task ends):
  - Every few seconds of work (`udfs.influence.PART_SECONDS`) the scoring function yields the rows
    of the documents it has finished and *progress rows* for the work done since the last part, one
    per document's worth (`udfs.influence.score_pooled`): a pool is worth its rows in all, a
    document without windows at once, the others in proportion to the window tokens scored. A long
    document's windows are spread over its pool's length-sorted batches, so it is finished only
    near the pool's end; its work shows as it is done.
  - `udfs.influence.score_documents` drops the progress rows by a filter right above the
    MapInPandas node. The filter's output rows are the documents finished; the MapInPandas node's
    output rows less those are the work done in documents' worth: "52% scored" (of the slice's
    documents), documents/s and the ETA come from it. Work counted in tokens would leave the total
    unknown until tasks end: one row count is all a running task can report besides its documents,
    and in documents the driver knows the total.
  - The job makes the Python worker hand each part to the JVM at once (`LIVE_OUTPUT_SETTINGS`).
  - Two accumulators add each task's exact documents and tokens when the task ends; tokens of the
    work in flight are estimated at the finished tasks' tokens per document, hence "about". Until a
    task has ended, the rate is in documents per second.
* Spark Connect: no accumulators and no status store on this side. The session's progress handler
  reports the stage's finished tasks; documents are estimated from them (the scoring tasks hold
  equal shares of the slice), tokens are counted when the slice is committed.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid

from spark_jobs import run_log

# Session settings while a scoring stage runs (classic sessions): the Python worker's socket buffer at a
# few bytes, so each batch of scored rows reaches the JVM when the function yields it (with Spark's 64 KiB
# default it sat there until the buffer filled, often until the task ended). Its cost is a few more
# system calls per Arrow batch, nothing against a forward pass.
LIVE_OUTPUT_SETTINGS = {"spark.sql.execution.pandas.udf.buffer.size": "64"}
LIVE_ROWS_METRIC = "number of output rows"
SCORING_NODE = "MapInPandas"
PROGRESS_FILTER_NODE = "Filter"  # right above the scoring node: drops its progress rows


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Counts:
    """What a source knows now: documents done and work done (live where it can), and exact figures of
    finished tasks."""

    def __init__(self, documents=0, finished_documents=0, finished_tokens=0, tasks=None, estimated=False,
                 work=0):
        self.documents = documents                    # done, counted inside running tasks where possible
        self.work = work                              # documents' worth scored, inside running tasks
        self.finished_documents = finished_documents  # of finished tasks (exact)
        self.finished_tokens = finished_tokens        # of finished tasks (exact)
        self.tasks = tasks                            # (finished, total) of the scoring stage, or None
        self.estimated = estimated                    # `documents` is an estimate (from tasks)


class ClassicSource:
    """Accumulators for finished tasks, the scoring operator's live output rows for running ones."""

    def __init__(self, spark, label: str):
        self.spark = spark
        self.context = spark.sparkContext
        self.documents = self.context.accumulator(0)
        self.tokens = self.context.accumulator(0)
        self.tag = f"attention-influence {label} {uuid.uuid4().hex[:8]}"
        self._previous_description = None

    @property
    def counters(self):
        return self.documents, self.tokens

    def start(self) -> None:
        # The scoring query's SQL execution carries this job description, so its metrics are found
        # among the session's other queries (and the Spark UI names it).
        self._previous_description = self.context.getLocalProperty("spark.job.description")
        self.context.setJobDescription(self.tag)

    def stop(self) -> None:
        self.context.setJobDescription(self._previous_description)

    def counts(self) -> _Counts:
        finished_documents, finished_tokens = self.documents.value, self.tokens.value
        documents, work = self._live_rows()
        return _Counts(max(finished_documents, documents), finished_documents, finished_tokens, self._tasks(),
                       work=work)

    def _live_rows(self) -> tuple[int, int]:
        """(documents, documents' worth of work) done in the running execution tagged by this source."""
        try:
            store = self.spark._jsparkSession.sharedState().statusStore()
            count = store.executionsCount()
            documents = work = 0
            executions = store.executionsList(max(0, count - 16), 16).iterator()
            while executions.hasNext():
                execution = executions.next()
                if execution.description() == self.tag:
                    rows = _scoring_rows(store, execution.executionId())
                    documents, work = documents + rows[0], work + rows[1]
            return documents, work
        except Exception:  # noqa: BLE001 - live rows are a refinement; the accumulators still count
            return 0, 0

    def _tasks(self):
        tracker = self.context.statusTracker()
        finished = total = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                finished, total = max((finished, total), (info.numCompletedTasks, info.numTasks), key=lambda t: t[1])
        return (finished, total) if total else None


def _scoring_rows(store, execution_id) -> tuple[int, int]:
    """(documents, documents' worth of work) of one execution: the output rows of the filter right above
    the scoring node, and the progress rows it dropped (the scoring node's output rows less its own). A
    scoring node without that filter counts documents only."""
    graph = store.planGraph(execution_id)
    values = store.executionMetrics(execution_id)
    rows = {}  # node id -> (node name, output rows so far; none reported yet is 0)
    nodes = graph.allNodes().iterator()
    while nodes.hasNext():
        node = nodes.next()
        metrics = node.metrics().iterator()
        while metrics.hasNext():
            metric = metrics.next()
            if metric.name() == LIVE_ROWS_METRIC:
                value = values.get(metric.accumulatorId())
                rows[node.id()] = (node.name(), _metric_number(value.get()) if value.isDefined() else 0)
    parent = {}
    edges = graph.edges().iterator()
    while edges.hasNext():
        edge = edges.next()
        parent[edge.fromId()] = edge.toId()  # from a node to the one that reads its output
    documents = work = 0
    for node_id, (name, output) in rows.items():
        if name != SCORING_NODE:
            continue
        above = rows.get(parent.get(node_id))
        kept = above[1] if above and above[0] == PROGRESS_FILTER_NODE else output
        documents, work = documents + kept, work + output - kept
    return documents, work


def _metric_number(text: str) -> int:
    """A SQL metric's value as the status store prints it (`1,234`, or `total (min, med, max)\\n1,234 (...)`)."""
    numbers = re.findall(r"\d[\d,]*", text.split("\n")[-1])
    return int(numbers[0].replace(",", "")) if numbers else 0


class ConnectSource:
    """Spark Connect: the scoring stage's finished tasks from the session's progress handler."""

    def __init__(self, spark, total_documents: int):
        self.spark = spark
        self.total_documents = total_documents
        self._stages: dict[int, tuple[int, int, bool]] = {}
        self._lock = threading.Lock()

    counters = None

    def _handler(self, **kwargs) -> None:  # stages, inflight_tasks, operation_id, done
        with self._lock:
            for stage in kwargs.get("stages") or []:
                self._stages[stage.stage_id] = (stage.num_completed_tasks, stage.num_tasks, stage.done)

    def start(self) -> None:
        self.spark.registerProgressHandler(self._handler)

    def stop(self) -> None:
        try:
            self.spark.removeProgressHandler(self._handler)
        except Exception:  # noqa: BLE001 - the session may be stopping
            pass

    def counts(self) -> _Counts:
        with self._lock:
            stages = list(self._stages.values())
        if not stages:
            return _Counts()
        finished, total, _ = max(stages, key=lambda s: s[1])  # the scoring stage: the slice's most tasks
        documents = round(self.total_documents * finished / total) if total else 0
        return _Counts(documents, tasks=(finished, total), estimated=True)


class Progress:
    """`with Progress(spark, total_documents) as progress:` run the work with `progress.counters`
    (None on Spark Connect, where tasks cannot count).

    The thread stops when the block ends, normally or by an exception, and prints nothing after.
    """

    def __init__(self, spark, total_documents: int, interval: float | None = None, stream=None,
                 label: str = "progress"):
        from spark_jobs.session import is_connect

        self.source = ConnectSource(spark, total_documents) if is_connect(spark) else ClassicSource(spark, label)
        self.total_documents = total_documents
        self.interval = interval or float(os.environ.get("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "5"))
        self.stream = stream or sys.stderr
        self.label = label
        self._stop = threading.Event()
        self._thread = None
        self._started = None

    @property
    def counters(self):
        """(documents, tokens) accumulators for the scoring function (picklable into tasks), or None."""
        return self.source.counters

    @property
    def settings(self) -> dict[str, str]:
        """Session settings the scoring stage runs under for this progress to see inside tasks."""
        return {} if self.source.counters is None else dict(LIVE_OUTPUT_SETTINGS)

    def line(self) -> str:
        elapsed = max(time.time() - self._started, 1e-9) if self._started else 0.0
        counts = self.source.counts()
        total = self.total_documents
        done = min(counts.documents, total) if total else counts.documents
        work = max(done, min(counts.work, total) if total else counts.work)  # documents' worth scored
        about = "about " if counts.estimated else ""
        parts = [f"{about}{done}/{total} documents" + (f" ({100 * done / total:.0f}%)" if total else "")]
        tokens = None
        if counts.finished_documents:
            in_flight = max(0, work - counts.finished_documents)
            tokens = counts.finished_tokens + round(in_flight * counts.finished_tokens / counts.finished_documents)
            parts.append(f"{'about ' if in_flight else ''}{tokens} tokens")
        if counts.tasks:
            parts.append(f"{counts.tasks[0]}/{counts.tasks[1]} tasks")
        if total and work > done:
            parts.append(f"{100 * work / total:.0f}% scored")
        if elapsed and tokens is not None:
            parts.append(f"{tokens / elapsed:.0f} tokens/s")
        elif elapsed and work:
            parts.append(f"{work / elapsed:.2f} documents/s")
        if work and elapsed and total > work:
            parts.append("ETA " + format_seconds(elapsed * (total - work) / work))
        elif not work:
            parts.append(f"{format_seconds(elapsed)} elapsed")
        return f"{self.label}: " + ", ".join(parts)

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                run_log.say(self.line(), self.stream)
            except Exception:  # noqa: BLE001 - the session may be stopping; progress is best effort
                return

    def __enter__(self):
        self._started = time.time()
        self.source.start()
        self._thread = threading.Thread(target=self._run, name="attention-influence-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        self.source.stop()
        return False
