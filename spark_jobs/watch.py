"""`--watch`: rounds of the slicer each time the input's Delta version moves, until stopped.

Documents appended to the input are scored by the stream within a round (slices.py); a commit that
rewrote the input (an overwrite, an update, a delete) is named in one line and followed by the full
comparison, which scores the ids that are new after it (ids already scored keep their scores).
"""

from __future__ import annotations

from typing import Callable

from spark_jobs import run_log
from spark_jobs.cli import Stopped
from spark_jobs.scores_table import latest_version
from spark_jobs.slices import Slicer
from spark_jobs.tables import v2_name

COMPACT_AFTER_SLICES = 8  # a run (or a --watch round) that committed more slices than this ends with OPTIMIZE


# ---------------------------------------------------------------- the input's history

def changes_since(spark, source: str, version: int) -> list[tuple[int, str]]:
    """Commits after `version` that were not blind appends (and changed data): (version, operation)."""
    from pyspark.sql import functions as F

    rows = spark.sql(f"DESCRIBE HISTORY {v2_name(source)}").where(F.col("version") > F.lit(int(version))).collect()
    return sorted((int(r["version"]), r["operation"]) for r in rows
                  if not r["isBlindAppend"] and r["operation"] not in ("OPTIMIZE", "VACUUM START", "VACUUM END",
                                                                       "SET TBLPROPERTIES"))


# ---------------------------------------------------------------- --watch

def watch(slicer: Slicer, read_input: Callable, interval: float) -> None:
    """Rounds of stream + (when needed) full comparison each time the input's version moves, until stopped.

    Documents appended to the input are scored by the stream within a round; a commit that rewrote
    the input (an overwrite, an update, a delete) is named in one line and followed by the full
    comparison, which scores the ids that are new after it (ids already scored keep their scores).
    """
    work = slicer.work
    last = None
    while True:
        version = latest_version(work.spark, work.source)
        if version != last:
            full = last is None
            if last is not None:
                changes = changes_since(work.spark, work.source, last)
                if changes:
                    full = True
                    run_log.say(f"input {work.source} was rewritten at version(s) "
                                f"{', '.join(f'{v} ({op})' for v, op in changes[:5])}: new ids are found by a full "
                                f"comparison; ids already scored keep their scores")
            slices_before = slicer.slices
            work.total = read_input().count()
            work.to_score = max(0, work.total - work.committed_before)
            if not slicer.run_stream():
                full = True
            if full:
                slicer.commit_remaining(read_input)
            if slicer.slices - slices_before > COMPACT_AFTER_SLICES:
                work.table.compact()
            last = version
            run_log.say(f"watching {work.source} (version {version}): {work.committed_before + slicer.documents} "
                        f"documents committed for this scorer; next look in {interval:g}s")
        if work.stop.event.wait(interval):
            raise Stopped(slicer.stopped_line())
