"""The job's own progress, printed from the driver while Spark works.

Scoring is one Spark stage; its console bar counts tasks, which says little when a task runs for
minutes. The scoring function adds each finished Arrow batch's documents and tokens to two Spark
accumulators (`udfs.influence.score_documents(..., counters=...)`); a Python worker reports them
when its task ends, so updates come once per finished task (hence several tasks per core or GPU,
see `score.default_partitions`). A daemon thread on the driver reads them every few seconds,
together with the stage's finished tasks from the status tracker, and prints one line:

    progress: 40/90 documents (44%), 18344 tokens, 3/8 tasks, 1530 tokens/s, ETA 33s
"""

from __future__ import annotations

import os
import sys
import threading
import time


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """`with Progress(spark, total_documents) as progress:` run the work with `progress.counters`.

    The thread stops when the block ends, normally or by an exception, and prints nothing after.
    """

    def __init__(self, spark, total_documents: int, interval: float | None = None, stream=None,
                 label: str = "progress"):
        self.context = spark.sparkContext
        self.documents = self.context.accumulator(0)
        self.tokens = self.context.accumulator(0)
        self.total_documents = total_documents
        self.interval = interval or float(os.environ.get("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "5"))
        self.stream = stream or sys.stderr
        self.label = label
        self._stop = threading.Event()
        self._thread = None
        self._started = None

    @property
    def counters(self):
        """(documents, tokens) accumulators for the scoring function (picklable into tasks)."""
        return self.documents, self.tokens

    def line(self) -> str:
        elapsed = max(time.time() - self._started, 1e-9) if self._started else 0.0
        done, tokens = self.documents.value, self.tokens.value
        parts = [f"{done}/{self.total_documents} documents"
                 + (f" ({100 * done / self.total_documents:.0f}%)" if self.total_documents else ""),
                 f"{tokens} tokens"]
        tasks = self._tasks()
        if tasks:
            parts.append(f"{tasks[0]}/{tasks[1]} tasks")
        if elapsed:
            parts.append(f"{tokens / elapsed:.0f} tokens/s")
        if done and elapsed and self.total_documents > done:
            parts.append("ETA " + format_seconds(elapsed * (self.total_documents - done) / done))
        elif not done:
            parts.append(f"{format_seconds(elapsed)} elapsed")
        return f"{self.label}: " + ", ".join(parts)

    def _tasks(self):
        tracker = self.context.statusTracker()
        finished = total = 0
        for stage_id in tracker.getActiveStageIds():
            info = tracker.getStageInfo(stage_id)
            if info is not None:
                finished, total = max((finished, total), (info.numCompletedTasks, info.numTasks), key=lambda t: t[1])
        return (finished, total) if total else None

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                print(self.line(), file=self.stream, flush=True)
            except Exception:  # noqa: BLE001 - the session may be stopping; progress is best effort
                return

    def __enter__(self):
        self._started = time.time()
        self._thread = threading.Thread(target=self._run, name="attention-influence-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        return False
