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

from spark_jobs.common import JobError, catalog_name, get_spark, new_parser, parse_flags, register_delta_table, run


def build_parser():
    p = new_parser("Register the Delta tables under --root by name in the catalog (external tables).")
    p.add_argument("--root", help="folder with one Delta table per name")
    p.add_argument("--database", help="catalog database (schema) to register them in")
    p.add_argument("--tables", help="comma-separated table names (= folder names under --root)")
    return p


def main(argv=None):
    args = parse_flags("register_tables", build_parser(), argv)
    names = [n.strip() for n in (args.tables or "").split(",") if n.strip()]
    if not names:
        raise JobError("--tables is empty")
    for name in names:  # every name is checked before anything is registered
        catalog_name(f"{args.database}.{name}")
    spark = get_spark("attention-influence-register-tables")
    for name in names:
        path = os.path.join(args.root, name)
        outcome = register_delta_table(spark, f"{args.database}.{name}", path)
        print(f"{args.database}.{name} -> {os.path.abspath(path)} ({outcome})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
