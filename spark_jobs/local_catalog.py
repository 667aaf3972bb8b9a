"""Which catalog a session a job starts gets, and what happens while another process holds the local one.

The local profile's catalog is a Hive metastore on embedded Derby under demo-output/, which admits one
process at a time (a job, a notebook, spark-sql). So:
- a job that names only Delta paths gets Spark's in-memory catalog and never touches it, whatever else runs;
- a job that names tables waits (one line, at most ATTENTION_INFLUENCE_CATALOG_WAIT seconds, default 60)
  while another process holds it, then ends with one line naming the catalog and what to do.
Derby holds an exclusive file lock on `dbex.lck` in its database folder while it runs; the JVM's lock is a
POSIX record lock, which this process can test without taking the database.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from spark_jobs import run_log
from spark_jobs.cli import FAILURE_LINES, JobError, is_path

CATALOG_IMPLEMENTATION = "spark.sql.catalogImplementation"
DERBY_URL = "spark.hadoop.javax.jdo.option.ConnectionURL"
WAIT_SECONDS_ENV = "ATTENTION_INFLUENCE_CATALOG_WAIT"
POLL_SECONDS = 1.0
# What Spark and Hive say when Derby refuses a second process (the first line of a long trace).
BUSY_MARKERS = ("Unable to instantiate org.apache.hadoop.hive.ql.metadata.SessionHiveMetaStoreClient",
                "Another instance of Derby may have already booted the database",
                "Failed to start database")
ADVICE = ("close the other session (a notebook, spark-sql or job), name Delta paths instead of tables, "
          "or use a shared metastore (docs/sql-and-notebooks.md)")


def derby_database(props: dict[str, str]) -> Path | None:
    """The embedded Derby database folder of a profile's metastore, if it uses one."""
    match = re.search(r"jdbc:derby:(?:;)?(?:databaseName=)?([^;]+)", props.get(DERBY_URL, ""))
    if not match or match.group(1).startswith("memory:"):
        return None
    return Path(match.group(1))


def held_by_another_process(database: Path) -> bool:
    """Whether a running Derby (another JVM) holds `database`: its lock file is locked."""
    lock = database / "dbex.lck"
    try:
        with open(lock, "r+b") as handle:
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.lockf(handle, fcntl.LOCK_UN)
            return False
    except OSError:  # no lock file: no Derby has it open
        return False


@dataclass(frozen=True)
class Choice:
    """The catalog of a session this process starts: in-memory (the job names only paths) or the profile's."""

    in_memory: bool

    @classmethod
    def for_tables(cls, table_refs) -> "Choice":
        return cls(in_memory=table_refs is not None and all(is_path(ref) for ref in table_refs if ref))

    def properties(self, props: dict[str, str]) -> dict[str, str]:
        if not self.in_memory:
            return props
        return {**{k: v for k, v in props.items() if not k.startswith("spark.hadoop.javax.jdo.")},
                CATALOG_IMPLEMENTATION: "in-memory"}

    def wait_until_free(self, props: dict[str, str]) -> None:
        """Return once the profile's Derby catalog is free (or not used); a JobError after the wait."""
        database = derby_database(props)
        if self.in_memory or props.get(CATALOG_IMPLEMENTATION, "in-memory") != "hive" or database is None:
            return
        if not held_by_another_process(database):
            return
        wait = float(os.environ.get(WAIT_SECONDS_ENV, "60"))
        run_log.say(f"the local catalog ({database}) is in use by another process; waiting up to {wait:g}s for it")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if not held_by_another_process(database):
                return
        raise JobError(f"the local catalog ({database}) is still in use by another process after {wait:g}s: {ADVICE}")


def busy_line(exc: BaseException) -> str | None:
    """One line for Derby refusing this process (another took the catalog after the wait), else None."""
    text = str(exc)
    if not any(marker in text for marker in BUSY_MARKERS):
        return None
    return f"the local catalog (Hive metastore on embedded Derby) is in use by another process: {ADVICE}"


FAILURE_LINES.append(busy_line)
