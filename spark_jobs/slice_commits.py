"""Where a slice is committed: into the scored table, exactly once, at a cost that does not grow with it.

Two ways to commit a slice's scored rows:

* **MERGE** (`merge_slice`: score.write_scores_with_retries, sql/merge_scores.sql): inserts the ids the
  table lacks. Always right, but Delta reads every id of the table for it, and the slice's documents
  were found by an anti-join against the table too: at 10M committed rows a slice cost several times
  what it costs against an empty table (docs/benchmarks.md).
* **Append** of a *fresh* slice: its documents come from input files that held no committed document
  of this scorer when the run was planned (the plan read the output once, at a pinned version), and
  that this run has not handed out before. Nothing of it can be in the table unless another writer put
  it there since; the slicer skips the anti-join, and the slice is appended as one Delta transaction.

What makes the append safe against another writer is Delta's own application transaction: every
commit of this scorer into the table carries `txnAppId` = attention-influence/<scorer> and a
`txnVersion` above the one Delta recorded for it. Delta skips a write whose txnVersion is not above the
recorded one and fails one whose snapshot was overtaken by another commit of the same app
(ConcurrentTransactionException). An append at r + 1, r being our own last commit, therefore lands only
if no other commit of this scorer landed since ours: a compare-and-swap on the Delta log. Each commit is
found again in the table's recent history by its `userMetadata`; one that did not land, or any other
writer's commit that added rows since the plan, ends the appends for the run: from then on every slice
is checked by the anti-join and MERGEd, as before.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Callable

from spark_jobs.common import CommitConflict, session_settings, v2_name

TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
TXN_VERSION = "spark.databricks.delta.write.txnVersion"
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"
HISTORY_ROWS = 20  # commits read back to find ours (a slice's commit and what landed around it)
# Commits that add no rows: another writer's (or this run's) bookkeeping never breaks the appends.
NO_NEW_ROWS = {"SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "OPTIMIZE", "VACUUM START", "VACUUM END",
               "ADD COLUMNS", "CHANGE COLUMN", "UPGRADE PROTOCOL", "CREATE TABLE"}


_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
              "ProtocolChangedException", "DELTA_CONCURRENT_", "TABLE_OR_VIEW_ALREADY_EXISTS",
              "FileAlreadyExistsException", "DELTA_TABLE_ALREADY_EXISTS", "DELTA_PROTOCOL_CHANGED",
              "DELTA_METADATA_CHANGED")


def is_commit_conflict(exc: BaseException) -> bool:
    """Delta's optimistic concurrency lost a race (or another writer created the table first)."""
    text = type(exc).__name__ + " " + str(exc)[:2000]
    return any(name in text for name in _CONFLICTS)


def latest_version(spark, table: str) -> int:
    """The table's current Delta version (-1: no table yet)."""
    from spark_jobs.common import table_exists

    if not table_exists(spark, table):
        return -1
    return int(spark.sql(f"DESCRIBE HISTORY {v2_name(table)} LIMIT 1").first()["version"])


def adds_rows(commit) -> bool:
    operation = commit["operation"] or ""
    if operation in NO_NEW_ROWS:
        return False
    metrics = commit["operationMetrics"] or {}
    return not (operation.startswith("CREATE") and str(metrics.get("numOutputRows", "0")) == "0")


class SliceCommits:
    """Commits the slices of one run into `table`; `fresh` slices by append while that stays safe."""

    def __init__(self, spark, table: str, fingerprint: str, plan_version: int, merge_slice: Callable,
                 appends: bool, files_per_commit: int = 1):
        self.spark = spark
        self.table = table
        self.app_id = f"attention-influence/{fingerprint}"
        self.run = uuid.uuid4().hex[:12]
        self.merge_slice = merge_slice  # scored rows -> one MERGE, conflicts retried
        self.appends = appends          # False: the table holds rows a slice may replace; MERGE always
        self.last_version = plan_version  # the table's version up to which no other writer added rows
        self.recorded: int | None = None  # our last txnVersion; None until a commit of ours proved the log
        self.commits = 0
        self.files_per_commit = files_per_commit  # the slice is written as this many files (one per task slot)

    @property
    def appending(self) -> bool:
        """Whether a fresh slice is appended (and so needs no anti-join before it is scored)."""
        return self.appends and self.recorded is not None

    def commit(self, scored, fresh: bool = False) -> None:
        if fresh and self.appending:
            if self._commit_tagged(scored, append=True, version=self.recorded + 1):
                return
            self._stop_appending("the commit did not land (another writer's commit of this scorer came first)")
        for attempt in range(1, 6):
            version = max(int(time.time() * 1000), (self.recorded or -1) + 1, self._recorded_in_history() + 1)
            if self._commit_tagged(scored, append=False, version=version):
                return
            print(f"the commit of this slice into {self.table} was skipped by Delta (another writer recorded a "
                  f"later transaction; attempt {attempt}); committing it again", file=sys.stderr, flush=True)
        raise CommitConflict(f"{self.table}: the slice's commit was skipped 5 times by Delta's idempotent "
                             f"transactions; this slice was not committed, rerun to complete")

    # ------------------------------------------------------------ one tagged commit

    def _commit_tagged(self, scored, append: bool, version: int) -> bool:
        """One commit of `scored` as transaction `version` of this scorer's app; whether it landed."""
        self.commits += 1
        metadata = json.dumps({"attention_influence_run": self.run, "commit": self.commits, "txn": version})
        try:
            if append:
                self._append(scored, version, metadata)
            else:
                with session_settings(scored.sparkSession, {TXN_APP_ID: self.app_id, TXN_VERSION: str(version),
                                                            USER_METADATA: metadata}):
                    self.merge_slice(scored)
        except Exception as exc:  # noqa: BLE001 - a lost race of an append is answered by a MERGE
            if append and is_commit_conflict(exc):
                return False
            raise
        return self._landed(metadata, version)

    def _append(self, scored, version: int, metadata: str) -> None:
        from spark_jobs.common import is_path

        writer = (scored.coalesce(self.files_per_commit).write.format("delta").mode("append")
                  .option("txnAppId", self.app_id).option("txnVersion", str(version))
                  .option("userMetadata", metadata))
        if is_path(self.table):
            writer.save(self.table)
        else:
            writer.saveAsTable(self.table)

    def _landed(self, metadata: str, version: int) -> bool:
        """Find our commit in the recent history; check what landed between it and our previous one."""
        history = self._history()
        ours = [c for c in history if c["userMetadata"] == metadata]
        if not ours:
            return False
        landed = int(ours[0]["version"])
        between = [c for c in history if self.last_version < int(c["version"]) < landed]
        seen_all = len(between) == landed - self.last_version - 1  # every commit since our last is in view
        foreign = [c for c in between if adds_rows(c) and not self._ours(c)]
        if foreign or not seen_all:
            what = (f"version {foreign[0]['version']} ({foreign[0]['operation']})" if foreign
                    else "commits older than its recent history")
            self._stop_appending(f"another writer added rows to it ({what})")
        elif self.appends:
            self.recorded = version
        self.last_version = landed
        return True

    def _ours(self, commit) -> bool:
        try:
            return json.loads(commit["userMetadata"] or "{}").get("attention_influence_run") == self.run
        except ValueError:
            return False

    def _history(self) -> list:
        return self.spark.sql(f"DESCRIBE HISTORY {v2_name(self.table)} LIMIT {HISTORY_ROWS}").collect()

    def _recorded_in_history(self) -> int:
        """The highest txnVersion this app's commits wrote in the recent history (-1: none seen)."""
        found = -1
        for commit in self._history():
            try:
                found = max(found, int(json.loads(commit["userMetadata"] or "{}").get("txn", -1)))
            except (ValueError, TypeError, AttributeError):
                continue
        return found

    def _stop_appending(self, why: str) -> None:
        if self.recorded is not None or self.appends:
            print(f"{self.table}: {why}; from now on every slice is checked against the table and MERGEd",
                  file=sys.stderr, flush=True)
        self.recorded = None
        self.appends = False
