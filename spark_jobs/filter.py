"""Filter before scoring (SPEC §7): exact duplicates and Gopher's repetition rules -> kept + rejected Delta tables.

    python spark_jobs/filter.py --input demo-output/corpus --output demo-output/kept --rejected demo-output/rejected

Every input row ends in exactly one of the two tables. The kept table has the input's columns; the
rejected one adds `rejected_by` (the rule: `exact_duplicate`, `empty`, or a `gopher_*` name of
`attention_influence.gopher.rule_names`) and `duplicate_of` (for exact duplicates, the id kept).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
from dataclasses import dataclass
from pathlib import Path

from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, flag, run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import check_table_name, quote_identifier, read_table, write_table

DECIDE_SQL = Path(__file__).with_name("sql") / "filter_decide.sql"
HELPER_COLUMNS = ("filter_id", "filter_text", "content_hash", "gopher_rule")
ADDED_COLUMNS = ("rejected_by", "duplicate_of")


@dataclass(frozen=True, kw_only=True)
class FilterOptions:
    """What one filter run needs: one field per flag (defaults: conf/filter.yaml)."""

    input: str = flag("Delta path or catalog table of documents", required=True)
    output: str = flag("Delta path or catalog table of the kept documents (replaced)", required=True)
    rejected: str = flag("Delta path or catalog table of the rejected documents, with rejected_by (replaced)",
                         required=True)
    id_col: str = flag("document id column (the smallest id of a duplicate group is kept)", required=True)
    text_col: str = flag("document text column", required=True)


JOB = Job("filter", FilterOptions, "Split a document table into kept and rejected rows: exact duplicates and "
                                   "Gopher's repetition rules (Rae et al. 2021, table A1).")
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


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
        write_table(decided.where(F.col("rejected_by").isNull()).drop(*ADDED_COLUMNS), options.output)
        write_table(decided.where(F.col("rejected_by").isNotNull()), options.rejected)
    finally:
        decided.unpersist()
    report(options, counts)
    return counts


def report(options: FilterOptions, counts: dict[str, int]) -> None:
    total = sum(counts.values())
    kept = counts.get("kept", 0)
    run_log.result(f"filtered {options.input}: {total} documents, {kept} kept -> {options.output}, "
                   f"{total - kept} rejected -> {options.rejected}")
    for rule, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if rule != "kept":
            run_log.result(f"  {rule}: {count}")


def main(argv=None):
    options = parse_options(argv)
    run(get_spark("attention-influence-filter", (options.input, options.output, options.rejected)), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
