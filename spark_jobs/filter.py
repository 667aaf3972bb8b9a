"""Filter before scoring (SPEC §7): exact duplicates and Gopher's repetition rules -> kept + rejected Delta tables.

    python spark_jobs/filter.py --input demo-output/corpus --output demo-output/kept --rejected demo-output/rejected

Every input row ends in exactly one of the two tables. The kept table has the input's columns; the
rejected one adds `rejected_by` (the rule: `exact_duplicate`, `empty`, or a `gopher_*` name of
`attention_influence.gopher.rule_names`) and `duplicate_of` (for exact duplicates, the id kept).
"""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from dataclasses import dataclass
from pathlib import Path

from spark_jobs import common
from spark_jobs.common import (JobError, check_table_name, get_spark, new_parser, options_from, parse_flags,
                               quote_identifier, read_table, replace_table)

DECIDE_SQL = Path(__file__).with_name("sql") / "filter_decide.sql"
HELPER_COLUMNS = ("filter_id", "filter_text", "content_hash", "gopher_rule")
ADDED_COLUMNS = ("rejected_by", "duplicate_of")


def build_parser():
    p = new_parser("Split a document table into kept and rejected rows: exact duplicates and Gopher's "
                   "repetition rules (Rae et al. 2021, table A1).")
    p.add_argument("--input", help="Delta path or catalog table of documents")
    p.add_argument("--output", help="Delta path or catalog table of the kept documents (replaced)")
    p.add_argument("--rejected", help="Delta path or catalog table of the rejected documents, with rejected_by (replaced)")
    p.add_argument("--id-col", help="document id column (the smallest id of a duplicate group is kept)")
    p.add_argument("--text-col", help="document text column")
    return p


@dataclass(frozen=True, kw_only=True)
class FilterOptions:
    """What one filter run needs; the flags of build_parser(), one field each (defaults: conf/filter.yaml)."""

    input: str
    output: str
    rejected: str
    id_col: str
    text_col: str


def parse_options(argv: list[str] | None = None, settings: dict | None = None) -> FilterOptions:
    """Options from flags over `--config` over `settings` over conf/filter.yaml (the edge of the job)."""
    return options_from(FilterOptions, parse_flags("filter", build_parser(), argv, settings),
                        ("input", "output", "rejected", "id_col", "text_col"))


def options(**settings) -> FilterOptions:
    """Options for a notebook or a test: conf/filter.yaml's defaults with `settings` over them."""
    return parse_options([], settings)


def check_input(documents, options: FilterOptions) -> None:
    """The id and text columns exist, the text is a string, and no input column clashes with ours."""
    missing = [c for c in (options.id_col, options.text_col) if c not in documents.columns]
    if missing:
        raise JobError(f"input {options.input} has no column(s) {', '.join(missing)} "
                       f"(columns: {', '.join(documents.columns)})")
    text_type = documents.schema[options.text_col].dataType.simpleString()
    if text_type != "string":
        raise JobError(f"text column {options.text_col} is {text_type}, expected STRING")
    clash = [c for c in documents.columns if c in HELPER_COLUMNS + ADDED_COLUMNS]
    if clash:
        raise JobError(f"input column(s) {', '.join(clash)} clash with the filter's columns; drop or rename them")
    if len({options.input, options.output, options.rejected}) < 3:
        raise JobError("--input, --output and --rejected must be three different tables")


def decide(spark, documents, options: FilterOptions):
    """Every input row once, with `rejected_by` (NULL: kept) and `duplicate_of`; the SQL is filter_decide.sql."""
    from pyspark.sql import functions as F

    from udfs.filters import filter_udf

    text = F.col(quote_identifier(options.text_col))  # names from flags are quoted, never parsed
    source = (documents
              .withColumn("filter_id", F.col(quote_identifier(options.id_col)))
              .withColumn("filter_text", text)
              .withColumn("filter_columns", filter_udf()(text))
              .withColumn("content_hash", F.col("filter_columns.content_hash"))
              .withColumn("gopher_rule", F.col("filter_columns.gopher_rule"))
              .drop("filter_columns"))
    source.createOrReplaceTempView("filter_source")
    return spark.sql(DECIDE_SQL.read_text()).drop(*HELPER_COLUMNS)


def run(spark, options: FilterOptions) -> dict[str, int]:
    """Write the kept and the rejected tables (each replaced atomically); returns documents per outcome.

    The decisions are computed once (cached) and both tables are written from them, so the two
    together hold every input row exactly once.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    for ref in (options.input, options.output, options.rejected):
        check_table_name(ref)
    documents = read_table(spark, options.input)
    check_input(documents, options)
    decided = decide(spark, documents, options).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {row["outcome"]: row["count"] for row in
                  decided.groupBy(F.coalesce("rejected_by", F.lit("kept")).alias("outcome")).count().collect()}
        replace_table(decided.where(F.col("rejected_by").isNull()).drop(*ADDED_COLUMNS), options.output)
        replace_table(decided.where(F.col("rejected_by").isNotNull()), options.rejected)
    finally:
        decided.unpersist()
    report(options, counts)
    return counts


def report(options: FilterOptions, counts: dict[str, int]) -> None:
    total = sum(counts.values())
    kept = counts.get("kept", 0)
    print(f"filtered {options.input}: {total} documents, {kept} kept -> {options.output}, "
          f"{total - kept} rejected -> {options.rejected}")
    for rule, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if rule != "kept":
            print(f"  {rule}: {count}")


def main(argv=None):
    options = parse_options(argv)
    run(get_spark("attention-influence-filter"), options)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
