"""Scores committed slice by slice, so a run killed at any point loses at most the slice in flight.

A run is a Structured Streaming query over the input table (Delta's source, `trigger(availableNow)`,
`maxFilesPerTrigger` from the slice size): Delta hands each micro-batch its own files, so no slice
rescans the whole input, and the query's checkpoint (under `--state-dir`) remembers which input
files are done. A micro-batch whose files all held nothing committed when the run was planned
(fresh) is cut into slices of about `--slice-documents` documents (by a hash of the id) and each
slice is scored and appended in one Delta commit, guarded by Delta's application transactions
(scores_table.py): no slice reads the output. Any other micro-batch keeps only the documents the
output does not already hold for this scorer (an anti-join against the output) and MERGEs them.
A batch replayed after a crash between its commit and the checkpoint's commit is not fresh, finds
its documents committed and scores nothing; a concurrent writer's commit ends the appends, and its
rows are skipped the same way; and the MERGE itself inserts an id at most once.

After the stream, one more anti-join over the whole input catches what a stream cannot see: rows
of the input that were rewritten (updates, overwrites: `skipChangeCommits` skips those commits),
`--retry-errors`, or a checkpoint that could not be resumed. It is sliced too (by the id's hash;
each slice then rescans the input, the price of the rare case).

`--watch` runs rounds of the same until stopped (watch.py): a round starts when the input's Delta version
moves, and takes the full anti-join as well when a commit since the last round was not a blind append.

Stops: the first SIGTERM or Ctrl-C lets the slice in flight commit, then ends the run with one
line and exit code 75 (EX_TEMPFAIL: rerun to resume); a second one stops at once, losing the
slice in flight. A `kill -9` loses the slice in flight; the rerun resumes from what was committed.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Callable

from attention_influence.errors import first_line
from spark_jobs import run_log
from spark_jobs.cli import Stopped
from spark_jobs.progress import format_seconds
from spark_jobs.scores_table import ScoresTable
from spark_jobs.session import is_connect, loggers_off, release
from spark_jobs.tables import data_file_name, is_path, quote_identifier

STOP_MARKER = "attention-influence-stop-at-slice-boundary"
FIRST_SLICE_DOCUMENTS_PER_SLOT = 32  # --slice-documents auto: the first slice, before a rate is measured
MIN_SLICE_DOCUMENTS = 1
MAX_STREAM_RESTARTS = 4  # auto-sized slices regrow the stream's micro-batches by restarting it


class StopSignal:
    """What SIGTERM and Ctrl-C asked for: `requested` after the first, `immediate` after the second."""

    def __init__(self):
        self.requested = False
        self.immediate = False
        self.event = threading.Event()

    def request(self, what: str = "stop requested") -> None:
        if self.requested:
            self.immediate = True
            run_log.say(f"{what} again: stopping now; the slice in flight is not committed")
        else:
            self.requested = True
            run_log.say(f"{what}: stopping after the slice in flight is committed (again to stop at once)")
        self.event.set()

    @contextmanager
    def installed(self):
        """SIGTERM and SIGINT handled by `request` while the block runs (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        names = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
        previous = {}

        def handle(signum, _frame):
            self.request(names.get(signum, f"signal {signum}"))
            if self.immediate:  # out of whatever Spark call the main thread waits in
                raise KeyboardInterrupt

        for signum in names:
            previous[signum] = signal.signal(signum, handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


class _StopAtBoundary(Exception):
    """Raised at the start of a micro-batch to end the stream there (nothing of that batch is done)."""


@dataclass
class SliceWork:
    """What the slicer needs from the job; score.py builds it (the slicer never sees options or tensors)."""

    spark: object
    source: str            # the input table (path or name)
    table: ScoresTable     # where the slices are committed, and what it already holds
    id_col: str
    score: Callable        # (documents, count, slice number) -> (scored rows, checkpointed; [(status, docs, tokens)])
    checkpoint: str          # the stream's checkpoint location
    slice_documents: int | None  # None: auto, sized to `slice_seconds` of measured work
    slice_seconds: float
    slots: int               # task slots of the cluster (cores, or GPUs)
    docs_per_file: float     # input documents per data file (sizes the stream's micro-batches)
    total: int               # documents in the input
    committed_before: int    # of them already committed for this scorer when the run started
    to_score: int            # of them left to score
    stop: StopSignal
    fresh_files: frozenset = frozenset()  # input files (by name) with nothing committed when the run was planned


class Slicer:
    """Commits slices of the work; counts what it committed for the run's report."""

    def __init__(self, work: SliceWork):
        self.work = work
        self.auto = work.slice_documents is None
        self.slice_documents = work.slice_documents or FIRST_SLICE_DOCUMENTS_PER_SLOT * max(1, work.slots)
        self.slices = 0
        self.documents = 0
        self.tokens = 0
        self.by_status: Counter = Counter()
        self.started = time.time()
        self._error: BaseException | None = None
        self._batch_docs = None  # documents per micro-batch the running stream was sized for
        self.restarts = 0
        self.handed_files: set[str] = set()  # input files this run has handed out

    # ------------------------------------------------------------ one slice

    def commit_slice(self, documents, count: int, fresh: bool = False) -> None:
        started = time.time()
        scored, stats = self.work.score(documents, count, self.slices + 1)
        try:
            if stats:
                self.work.table.commit(scored, fresh)
        finally:
            release(scored)
        seconds = time.time() - started
        if not stats:  # an empty hash bucket
            return
        done = sum(r[1] for r in stats)
        tokens = sum(r[2] or 0 for r in stats if r[0] == "ok")
        self.slices += 1
        self.documents += done
        self.tokens += tokens
        self.by_status.update({r[0]: r[1] for r in stats})
        committed = self.work.committed_before + self.documents
        elapsed = time.time() - self.started
        remaining = max(0, self.work.to_score - self.documents)
        eta = f", ETA {format_seconds(elapsed * remaining / self.documents)}" if remaining and self.documents else ""
        run_log.say(f"slice {self.slices}: {done} documents, {tokens} tokens in {seconds:.1f}s "
                    f"({tokens / seconds if seconds else 0:.0f} tokens/s), committed; total committed "
                    f"{committed}/{self.work.total} ({100 * committed / max(1, self.work.total):.0f}%){eta}")
        if self.auto and done and seconds > 0:
            wanted = int(done / seconds * self.work.slice_seconds)
            self.slice_documents = max(MIN_SLICE_DOCUMENTS, min(wanted, 4 * self.slice_documents))

    def commit_documents(self, documents, fresh: bool = False, count: int | None = None) -> None:
        """Every document of `documents` not yet committed, in slices of about `slice_documents`.

        A round counts what is left (the anti-join), cuts it into k buckets by the id's hash, k from
        the slice size, and commits one slice per bucket; each slice's anti-join runs anew, so a
        slice another writer committed meanwhile is skipped. The next round finds nothing left.
        `fresh` documents (from input files that held nothing committed, see scores_table.py) skip the
        anti-join while the committer appends: none of them can be in the output unless another
        writer put it there, and then the append does not land and the slice is MERGEd instead.
        """
        from pyspark.sql import functions as F

        id_hash = F.xxhash64(F.col(quote_identifier(self.work.id_col)))
        if fresh and self.work.table.appending:
            left = documents.count() if count is None else count
            buckets = max(1, math.ceil(left / self.slice_documents))
            for bucket in range(buckets):
                if bucket:
                    self._check_stop()
                if not self.work.table.appending:  # another writer came: the anti-join finds what is left
                    break
                piece = documents if buckets == 1 else documents.where(F.pmod(id_hash, F.lit(buckets)) == bucket)
                self.commit_slice(piece, math.ceil(left / buckets), fresh=True)
            else:
                return
        while True:
            self._check_stop()
            todo = self.work.table.not_committed(documents)
            left = todo.count()
            if not left:
                return
            buckets = math.ceil(left / self.slice_documents)
            for bucket in range(buckets):
                if bucket:
                    self._check_stop()
                piece = todo if buckets == 1 else todo.where(F.pmod(id_hash, F.lit(buckets)) == bucket)
                self.commit_slice(piece, math.ceil(left / buckets))  # sizes tasks and progress: about is enough

    def _check_stop(self) -> None:
        if self.work.stop.requested:
            raise _StopAtBoundary(STOP_MARKER + ": stop")

    # ------------------------------------------------------------ the stream

    def run_stream(self) -> bool:
        """The input's files not yet streamed, in micro-batches; False when the stream could not run.

        On Spark Connect a `foreachBatch` function runs in a Python process of the server, away from
        this driver's slicer, its progress and its stop signals: there score.py hands the input's files
        to `run_files` instead.
        """
        if is_connect(self.work.spark):
            return False
        failures = 0
        while True:
            outcome = self._stream_once()
            if outcome == "done":
                return True
            if outcome == "restart":
                continue
            failures += 1
            if failures >= 2:
                return False

    def _fresh(self, batch) -> tuple[bool, int | None]:
        """(whether every file of this micro-batch held nothing committed when the run was planned and was
        not handed out before in this run, the batch's documents). One pass over the batch: a micro-batch
        knows its files only row by row (`input_file_name`; it has no `inputFiles()` or `_metadata`)."""
        from pyspark.sql import functions as F

        try:
            counts = {data_file_name(r[0]): r[1] for r in batch.groupBy(F.input_file_name()).count().collect()}
        except Exception:  # noqa: BLE001 - files unknown: the anti-join decides
            return False, None
        files = set(counts)
        fresh = bool(files) and "" not in files and files <= self.work.fresh_files and not files & self.handed_files
        self.handed_files |= files
        return fresh, sum(counts.values())

    def _max_files(self) -> int:
        return max(1, round(self.slice_documents / max(self.work.docs_per_file, 1e-9)))

    def _stream_once(self) -> str:
        spark = self.work.spark
        self._error = None
        max_files = self._max_files()
        self._batch_docs = max_files * self.work.docs_per_file
        reader = (spark.readStream.format("delta").option("maxFilesPerTrigger", str(max_files))
                  .option("skipChangeCommits", "true"))
        stream = reader.load(self.work.source) if is_path(self.work.source) else reader.table(self.work.source)

        def process(batch, batch_id):
            try:
                self._check_stop()
                if self.auto and self.restarts < MAX_STREAM_RESTARTS and self.slice_documents > 2 * self._batch_docs:
                    raise _StopAtBoundary(STOP_MARKER + ": restart")
                fresh, count = self._fresh(batch)
                self.commit_documents(batch, fresh=fresh, count=count)
            except BaseException as exc:  # noqa: BLE001 - kept for the main thread, then raised to stop the query
                self._error = exc
                raise

        with loggers_off(spark, STREAM_LOGGERS):
            return self._await(stream, process)

    def _await(self, stream, process) -> str:
        query = (stream.writeStream.foreachBatch(process).option("checkpointLocation", self.work.checkpoint)
                 .trigger(availableNow=True).start())
        failure = None
        try:
            while query.isActive:
                if self.work.stop.immediate:
                    query.stop()
                    break
                try:
                    query.awaitTermination(1)
                except KeyboardInterrupt:
                    if not self.work.stop.immediate:
                        raise
                except Exception as exc:  # noqa: BLE001 - sorted out below
                    failure = exc
                    break
        finally:
            if query.isActive:
                query.stop()
        if self.work.stop.immediate:
            raise Stopped(self.stopped_line(at_once=True))
        error = self._error
        if isinstance(error, _StopAtBoundary):
            if "restart" in str(error):
                self.restarts += 1
                run_log.say(f"slices now about {self.slice_documents} documents (measured); restarting the stream "
                            f"with {self._max_files()} input files per micro-batch")
                return "restart"
            raise Stopped(self.stopped_line())
        if error is not None:
            raise error  # a task that failed every attempt, a commit lost to other writers: the job's own errors
        if failure is None:
            failure = query.exception()
        if failure is None:
            return "done"
        run_log.warn(f"the stream over {self.work.source} stopped ({first_line(failure)[:300]}); "
                     f"restarting it, then a full comparison of the input and the output")
        return "failed"

    # ------------------------------------------------------------ Spark Connect: the input's files

    def run_files(self, read_files: Callable, paths: list[str]) -> None:
        """Spark Connect, where the stream cannot run here: the input files that held nothing committed
        when the run was planned (`paths`), a few per slice, each group read alone (`read_files`), so a
        slice reads its own files rather than rescanning the input. Every other document is left to
        `commit_remaining`'s one full comparison at the end."""
        try:
            start = 0
            while start < len(paths):
                self._check_stop()
                group = paths[start:start + self._max_files()]
                start += len(group)
                self.handed_files |= {data_file_name(path) for path in group}
                self.commit_documents(read_files(group), fresh=True)
        except _StopAtBoundary:
            raise Stopped(self.stopped_line()) from None
        except KeyboardInterrupt:
            if not self.work.stop.immediate:
                raise
            with suppress(Exception):
                self.work.spark.interruptAll()
            raise Stopped(self.stopped_line(at_once=True)) from None

    # ------------------------------------------------------------ what the stream cannot see

    def commit_remaining(self, read_input: Callable) -> None:
        """The full anti-join: whatever the input holds that the output lacks, in hashed slices."""
        try:
            self.commit_documents(read_input())
        except _StopAtBoundary:
            raise Stopped(self.stopped_line()) from None
        except KeyboardInterrupt:
            if not self.work.stop.immediate:
                raise
            with suppress(Exception):  # the slice's Spark jobs, which would run on
                self.work.spark.interruptAll()
            raise Stopped(self.stopped_line(at_once=True)) from None

    def stopped_line(self, at_once: bool = False) -> str:
        committed = self.work.committed_before + self.documents
        how = "at once; the slice in flight was not committed" if at_once else "after the slice in flight"
        return (f"stopped on request {how}: {self.slices} slice(s) committed in this run, {committed} of "
                f"{self.work.total} documents committed for this scorer; rerun the same command to resume")


# Spark logs a query this job ends (a stop at a slice boundary, a task that failed every attempt, a commit
# lost to other writers) at ERROR with a Python traceback; the job reports each of these in one line.
STREAM_LOGGERS = ("org.apache.spark.sql.execution.streaming",)
