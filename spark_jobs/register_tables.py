"""Register Delta tables by name in the session's catalog: <root>/<table> -> <database>.<table>.

    python spark_jobs/register_tables.py --root demo-output --database demo
    spark-sql --properties-file conf/spark/local.conf -e "SELECT COUNT(*) FROM demo.scored"

The tables are external: they point at the Delta folders, which stay where they are, and a
rerun after the folders are rewritten changes nothing (the catalog reads the latest version).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import os
import sys
from dataclasses import dataclass, replace

from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, flag, run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import catalog_name, register_delta_table


@dataclass(frozen=True, kw_only=True)
class RegisterOptions:
    """One field per flag (defaults: conf/register_tables.yaml); `tables` becomes a tuple of names."""

    root: str = flag("folder with one Delta table per name")
    database: str = flag("catalog database (schema) to register them in")
    tables: tuple[str, ...] = flag("comma-separated table names (= folder names under --root)")


def check_names(options: RegisterOptions) -> RegisterOptions:
    """Every name checked before anything is registered."""
    tables = tuple(n.strip() for n in (options.tables or "").split(",") if n.strip())
    if not tables:
        raise JobError("--tables is empty")
    for name in tables:
        catalog_name(f"{options.database}.{name}")
    return replace(options, tables=tables)


JOB = Job("register_tables", RegisterOptions,
          "Register the Delta tables under --root by name in the catalog (external tables).", check=check_names)
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


def run(spark, options: RegisterOptions) -> None:
    for name in options.tables:
        path = os.path.join(options.root, name)
        outcome = register_delta_table(spark, f"{options.database}.{name}", path)
        run_log.result(f"{options.database}.{name} -> {os.path.abspath(path)} ({outcome})")


def main(argv=None):
    options = parse_options(argv)  # before Spark starts: a user error is one line
    run(get_spark("attention-influence-register-tables"), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
