"""The scored table: what it holds for a scorer, and where each slice is committed into it, exactly once.

Two ways to commit a slice's scored rows (`ScoresTable.commit`):

* **MERGE** (sql/merge_scores.sql, retried when a concurrent writer's commit conflicts): inserts the ids
  the table lacks. Always right, but Delta reads every id of the table for it, and the slice's documents
  were found by an anti-join against the table too: at 10M committed rows a slice cost several times
  what it costs against an empty table (docs/benchmarks.md).
* **Append** of a *fresh* slice: its documents come from input files that held no committed document
  of this scorer when the run was planned (the plan read the table once, at a pinned version), and
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
is checked by the anti-join and MERGEd. The run's first slice is a MERGE (it proves nothing else wrote
since the plan).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path

from attention_influence.errors import first_line
from spark_jobs import run_log
from spark_jobs.cli import CommitConflict
from spark_jobs.session import run_sql, session_settings
from spark_jobs.tables import (SCORER, SCORER_COLUMN, data_file_name, is_path, quote_identifier, read_table, set_table_properties,
                               table_detail, table_exists, table_properties, v2_name, write_table)

MERGE_SCORES_SQL = Path(__file__).parent / "sql" / "merge_scores.sql"
INSERT_NEW_SCORES_SQL = Path(__file__).parent / "sql" / "insert_new_scores.sql"
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
    if not table_exists(spark, table):
        return -1
    return int(spark.sql(f"DESCRIBE HISTORY {v2_name(table)} LIMIT 1").first()["version"])


def adds_rows(commit) -> bool:
    operation = commit["operation"] or ""
    if operation in NO_NEW_ROWS:
        return False
    metrics = commit["operationMetrics"] or {}
    return not (operation.startswith("CREATE") and str(metrics.get("numOutputRows", "0")) == "0")


class ScoresTable:
    """The Delta table one run commits its scores into (the output, or an overwrite run's staging table).

    `name` is what messages call it (the output the user named); `properties` are the scorer's, written
    with the table and again once when a slice lands while they differ.
    """

    def __init__(self, spark, ref: str, fingerprint: str, id_col: str, *, name: str | None = None,
                 retry_errors: bool = False, commit_attempts: int = 5, files_per_commit: int = 1,
                 properties: dict[str, str] | None = None):
        self.spark = spark
        self.ref = ref
        self.name = name or ref
        self.fingerprint = fingerprint
        self.id_col = id_col
        self.retry_errors = bool(retry_errors)
        self.commit_attempts = commit_attempts or 5
        self.files_per_commit = files_per_commit  # a slice is written as this many files (one per task slot)
        self.properties = dict(properties or {})
        self.app_id = f"attention-influence/{fingerprint}"
        self.run = uuid.uuid4().hex[:12]
        self.replaces_rows = True     # the table may hold rows a slice replaces (another scorer's, errors to retry)
        self.appends = False          # whether fresh slices may be appended (only when nothing is replaced)
        self.last_version = -1        # the table's version up to which no other writer added rows
        self.recorded: int | None = None  # our last txnVersion; None until a commit of ours proved the log
        self.commits = 0
        self._scorer_recorded: str | None = None

    # ------------------------------------------------------------ what it holds

    def version(self) -> int:
        return latest_version(self.spark, self.ref)

    def committed(self, version: int | None = None):
        """Ids holding a current score (this scorer; not an error row under --retry-errors), as of `version`."""
        from pyspark.sql import functions as F

        table = read_table(self.spark, self.ref)
        if version is not None:
            reader = self.spark.read.format("delta").option("versionAsOf", int(version))
            table = reader.load(self.ref) if is_path(self.ref) else reader.table(self.ref)
        done = table.where(F.col(SCORER_COLUMN) == self.fingerprint)
        if self.retry_errors:
            done = done.where(F.col("status") != "error")
        return done.select(F.col(quote_identifier(self.id_col)).alias("committed_id"))

    def not_committed(self, documents):
        """`documents` less the ids the table already holds for this scorer (the run's one anti-join)."""
        from pyspark.sql import functions as F

        if not table_exists(documents.sparkSession, self.ref):  # a micro-batch lives in the stream's session
            return documents
        return documents.join(self.committed(), F.col(quote_identifier(self.id_col)) == F.col("committed_id"),
                              how="left_anti")

    def committed_per_file(self, documents, version: int) -> tuple[int, dict[str, int]]:
        """(documents in the input, {input file name: its documents committed for this scorer at `version`}),
        in one pass over the input's ids and the table's: what lets fresh input files skip the anti-join."""
        from pyspark.sql import functions as F

        ids = documents.select(F.col(quote_identifier(self.id_col)).alias("_id"),
                               F.col("_metadata.file_path").alias("_file"))
        if version < 0:
            return ids.count(), {}
        rows = (ids.join(self.committed(version), F.col("_id") == F.col("committed_id"), "left")
                .groupBy("_file").agg(F.count(F.lit(1)).alias("documents"), F.count("committed_id").alias("committed"))
                .collect())
        total = sum(r["documents"] for r in rows)
        return total, {data_file_name(r["_file"]): r["committed"] for r in rows if r["committed"]}

    def holds_replaceable_rows(self) -> bool:
        """Whether a slice's MERGE may have to replace rows (another scorer's, or errors under --retry-errors);
        if not, every slice is an insert-only MERGE, which Delta runs as an anti-join and an append."""
        from pyspark.sql import functions as F

        if not table_exists(self.spark, self.ref):
            return False
        replaceable = F.col(SCORER_COLUMN) != self.fingerprint
        if self.retry_errors:
            replaceable = replaceable | (F.col("status") == "error")
        return bool(read_table(self.spark, self.ref).where(replaceable).limit(1).count())

    # ------------------------------------------------------------ before the first slice

    def ensure(self, empty_rows) -> None:
        """The table exists (empty, with the output's schema and the properties) before the first slice,
        so every slice is a MERGE or an append; a concurrent writer that created it first is fine."""
        if table_exists(self.spark, self.ref):
            return
        try:
            write_table(empty_rows, self.ref, self.properties, replace=False)
        except Exception as exc:  # noqa: BLE001 - another writer created it: merge into theirs
            if not (is_commit_conflict(exc) and table_exists(self.spark, self.ref)):
                raise

    def open_slices(self, plan_version: int, replaces_rows: bool) -> None:
        """Commits from here are this run's slices, planned at `plan_version`; when the table holds no row a
        slice replaces (`replaces_rows` False), MERGEs insert only and fresh slices may be appended."""
        self.replaces_rows = replaces_rows
        self.appends = not replaces_rows
        self.last_version = plan_version
        self._scorer_recorded = table_properties(self.spark, self.ref).get(SCORER)

    @property
    def appending(self) -> bool:
        """Whether a fresh slice is appended (and so needs no anti-join before it is scored)."""
        return self.appends and self.recorded is not None

    # ------------------------------------------------------------ a slice, once

    def commit(self, scored, fresh: bool = False) -> None:
        """One slice in one commit: appended when `fresh` and appending is safe, else MERGEd; then the
        scorer's properties once if they changed."""
        self._commit_once(scored, fresh)
        if self.properties and self._scorer_recorded != self.fingerprint:
            set_table_properties(self.spark, self.ref, self.properties)
            self._scorer_recorded = self.fingerprint

    def _commit_once(self, scored, fresh: bool) -> None:
        if fresh and self.appending:
            if self._commit_tagged(scored, append=True, version=self.recorded + 1):
                return
            self._stop_appending("the commit did not land (another writer's commit of this scorer came first)")
        for attempt in range(1, 6):
            version = max(int(time.time() * 1000), (self.recorded or -1) + 1, self._recorded_in_history() + 1)
            if self._commit_tagged(scored, append=False, version=version):
                return
            run_log.say(f"the commit of this slice into {self.ref} was skipped by Delta (another writer recorded "
                        f"a later transaction; attempt {attempt}); committing it again")
        raise CommitConflict(f"{self.ref}: the slice's commit was skipped 5 times by Delta's idempotent "
                             f"transactions; this slice was not committed, rerun to complete")

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
                    self.merge_with_retries(scored)
        except Exception as exc:  # noqa: BLE001 - a lost race of an append is answered by a MERGE
            if append and is_commit_conflict(exc):
                return False
            raise
        return self._landed(metadata, version)

    def _append(self, scored, version: int, metadata: str) -> None:
        writer = (scored.coalesce(self.files_per_commit).write.format("delta").mode("append")
                  .option("txnAppId", self.app_id).option("txnVersion", str(version))
                  .option("userMetadata", metadata))
        writer.save(self.ref) if is_path(self.ref) else writer.saveAsTable(self.ref)

    def merge_with_retries(self, scored) -> None:
        """`merge`, again when a concurrent writer's commit conflicts with ours.

        The slice's scores are computed (checkpointed); each attempt re-reads the table: the MERGE leaves
        rows the other writer already scored with this scorer, inserts the rest. So every id ends up
        once and no row is lost; after `--commit-attempts` lost races the job gives up (exit 3),
        with the slices before this one committed.
        """
        for attempt in range(1, self.commit_attempts + 1):
            try:
                self.merge(scored, insert_only=not self.replaces_rows)
                return
            except Exception as exc:  # noqa: BLE001 - only conflicts are retried
                if not is_commit_conflict(exc):
                    raise
                reason = first_line(exc)[:200]
                if attempt == self.commit_attempts:
                    raise CommitConflict(f"{self.name}: concurrent writers conflicted {self.commit_attempts} times "
                                         f"(last: {reason}); this slice was not committed, rerun to complete"
                                         ) from None
                run_log.say(f"commit conflict on {self.name} (attempt {attempt}/{self.commit_attempts}: {reason}); "
                            f"re-reading the table and retrying")
                time.sleep(random.uniform(0.5, 2.0) * attempt)

    def merge(self, scored, insert_only: bool = False) -> None:
        """One SQL MERGE (new ids inserted, stale scorers and retried errors replaced; `insert_only` when the
        table holds nothing to replace: the same MERGE without its update clause).

        SQL rather than the DeltaTable API, so the same statement runs on a Spark Connect session. The
        table and the id column are checked and backquoted identifiers (SQL takes no parameter for
        them); `retry_errors` is a named parameter. The slice is written as a few files, one per slot.
        """
        session = scored.sparkSession
        view = "attention_influence_slice_" + uuid.uuid4().hex[:12]
        scored.coalesce(self.files_per_commit).createOrReplaceTempView(view)
        sql = INSERT_NEW_SCORES_SQL if insert_only else MERGE_SCORES_SQL
        text = sql.read_text().format(target=v2_name(self.ref), source=view, id_col=quote_identifier(self.id_col))
        try:
            run_sql(session, text, None if insert_only else {"retry_errors": self.retry_errors})
        finally:
            session.catalog.dropTempView(view)

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
        return self.spark.sql(f"DESCRIBE HISTORY {v2_name(self.ref)} LIMIT {HISTORY_ROWS}").collect()

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
            run_log.say(f"{self.ref}: {why}; from now on every slice is checked against the table and MERGEd")
        self.recorded = None
        self.appends = False

    # ------------------------------------------------------------ after the slices

    def compact(self) -> None:
        """OPTIMIZE: slices write a few small files each; a reader wants few big ones."""
        before = table_detail(self.spark, self.ref)["numFiles"]
        try:
            self.spark.sql(f"OPTIMIZE {v2_name(self.ref)}").collect()
        except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; a concurrent writer may win
            run_log.warn(f"OPTIMIZE {self.ref} did not run ({first_line(exc)[:200]}); the scores are committed")
            return
        run_log.say(f"compacted {self.ref}: {before} files -> {table_detail(self.spark, self.ref)['numFiles']}")
