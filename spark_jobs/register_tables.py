"""Register Delta tables by name in the session's catalog: <root>/<table> -> <database>.<table>.

    python spark_jobs/register_tables.py --root demo-output --database demo
    spark-sql --properties-file conf/spark/local.conf -e "SELECT COUNT(*) FROM demo.scored"

The tables are external: they point at the Delta folders, which stay where they are, and a
rerun after the folders are rewritten changes nothing (the catalog reads the latest version).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dataclasses import dataclass

from spark_jobs import common
from spark_jobs.common import (JobError, catalog_name, get_spark, new_parser, options_from, parse_flags,
                               register_delta_table)


def build_parser():
    p = new_parser("Register the Delta tables under --root by name in the catalog (external tables).")
    p.add_argument("--root", help="folder with one Delta table per name")
    p.add_argument("--database", help="catalog database (schema) to register them in")
    p.add_argument("--tables", help="comma-separated table names (= folder names under --root)")
    return p


@dataclass(frozen=True, kw_only=True)
class RegisterOptions:
    """The flags of build_parser() (defaults: conf/register_tables.yaml); `tables` as a tuple of names."""

    root: str
    database: str
    tables: tuple[str, ...]


def parse_options(argv: list[str] | None = None, settings: dict | None = None) -> RegisterOptions:
    """Options from flags over `--config` over `settings` over conf/register_tables.yaml; every name is
    checked here, before anything is registered."""
    flags = parse_flags("register_tables", build_parser(), argv, settings)
    flags.tables = tuple(n.strip() for n in (flags.tables or "").split(",") if n.strip())
    if not flags.tables:
        raise JobError("--tables is empty")
    options = options_from(RegisterOptions, flags)
    for name in options.tables:
        catalog_name(f"{options.database}.{name}")
    return options


def run(spark, options: RegisterOptions) -> None:
    for name in options.tables:
        path = os.path.join(options.root, name)
        outcome = register_delta_table(spark, f"{options.database}.{name}", path)
        print(f"{options.database}.{name} -> {os.path.abspath(path)} ({outcome})")


def main(argv=None):
    options = parse_options(argv)  # before Spark starts: a user error is one line
    run(get_spark("attention-influence-register-tables"), options)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
