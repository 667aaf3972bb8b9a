"""Select the top documents with Spark SQL (SPEC §4): scored Delta -> distributed ranking -> new Delta table.

    python spark_jobs/select.py --input demo-output/scored --output demo-output/selected --fraction 0.2
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, flag, fraction, positive_int, run as run_job
from spark_jobs.session import get_spark, run_sql
from spark_jobs.tables import (DOMAIN_COL, ID_COL, INPUT, quote_identifier, read_table, table_exists,
                               table_properties, v2_name)

SELECT_TOP_SQL = Path(__file__).with_name("sql") / "select_top.sql"
SELECT_CANDIDATES_SQL = Path(__file__).with_name("sql") / "select_candidates.sql"
# Delta's SQL parser drops named parameters on Spark >= 4.1 (delta-io/delta#7640) unless they are
# substituted as constants; conf/spark/*.conf set it, and the job sets it for its own query only.


@dataclass(frozen=True, kw_only=True)
class SelectOptions:
    """What one selection needs: one field per flag (defaults: conf/select.yaml).

    `id_col` and `domain_col` may be None: the columns score.py recorded in the table are used.
    """

    input: str = flag("scored Delta path or catalog table", required=True)
    output: str = flag("Delta path or catalog table for the selection (replaced atomically)", required=True)
    fraction: float = flag("share of each domain's ok documents to keep", type=fraction)
    token_budget: int | None = flag("keep this many tokens instead of a fraction", type=positive_int)
    by_domain: bool = flag("rank within each domain (--global: over the whole table)", off="--global")
    min_tokens: int | None = flag("shorter documents are not candidates", type=int)
    id_col: str | None = flag("id column (default: as recorded by score.py)")
    domain_col: str | None = flag("domain column (default: as recorded by score.py)")


JOB = Job("select", SelectOptions, "Keep the documents with the highest attention_influence, per domain by default.")
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


def with_recorded_columns(spark, options: SelectOptions) -> SelectOptions:
    """The id and domain columns: as given, else as score.py recorded them, else `id` and `domain`."""
    recorded = table_properties(spark, options.input) if table_exists(spark, options.input) else {}
    return replace(options, id_col=options.id_col or recorded.get(ID_COL, "id"),
                   domain_col=options.domain_col or recorded.get(DOMAIN_COL, "domain"))


def select_top(spark, scored, options: SelectOptions):
    """The selection as a DataFrame; the SQL text is in spark_jobs/sql/select_top.sql.

    Column names from flags are quoted, values are named parameters: neither becomes SQL text.
    """
    register_candidates(spark, scored, options)
    return run_sql(spark, SELECT_TOP_SQL.read_text(), selection_parameters(options))


def register_candidates(spark, scored, options: SelectOptions) -> None:
    """The views select_top.sql reads: `candidates_source` (the scored table, checked, with
    `selection_id` and `selection_domain` from the id and domain columns), `ranking_candidates`
    (select_candidates.sql: the narrow rows that compete) and `ranked_candidates` (those ranked by
    spark_jobs/ranking.py: a distributed sort, not a window over a domain)."""
    from pyspark.sql import functions as F

    from spark_jobs.ranking import rank_within_groups

    missing = [c for c in ("attention_influence", "status", "n_tokens") if c not in scored.columns]
    if options.id_col not in scored.columns:
        missing.append(options.id_col)
    if missing:
        raise JobError(f"input {options.input} is not a scored table: no column(s) {', '.join(missing)}")
    domain = F.col(quote_identifier(options.domain_col)) if options.domain_col in scored.columns else F.lit(None)
    source = (scored.withColumn("selection_id", F.col(quote_identifier(options.id_col)).cast("string"))
              .withColumn("selection_domain", F.coalesce(domain.cast("string"), F.lit(""))))
    source.createOrReplaceTempView("candidates_source")
    input_columns(spark, scored, options).createOrReplaceTempView("input_columns")
    parameters = selection_parameters(options)
    narrow = run_sql(spark, SELECT_CANDIDATES_SQL.read_text(),
                     {k: parameters[k] for k in ("by_domain", "min_tokens")})
    narrow.createOrReplaceTempView("ranking_candidates")
    ranked = rank_within_groups(narrow, "ranking_group",
                                [F.col("attention_influence").desc(), F.col("selection_id").asc()],
                                rank="rank_in_domain", group_rows="group_documents",
                                running=("n_tokens", "tokens_so_far", "group_tokens"))
    ranked.createOrReplaceTempView("ranked_candidates")


def input_columns(spark, scored, options: SelectOptions):
    """(selection_id, the input columns the scored table does not carry): from the documents score.py
    recorded as its input, when it ran with --carry-cols narrower than the input; else no rows, which
    the selection's outer join drops at planning. So the selection keeps every column of the input."""
    from pyspark.sql import functions as F

    recorded = table_properties(spark, options.input).get(INPUT) if table_exists(
        spark, options.input) else None
    if recorded and not table_exists(spark, recorded):
        run_log.warn(f"{recorded}, the input score.py recorded for {options.input}, is not readable here: the "
                     f"selection has the scored table's columns only")
    elif recorded:
        documents = read_table(spark, recorded)
        missing = [c for c in documents.columns if c not in scored.columns and c != options.id_col]
        if missing and options.id_col in documents.columns:
            return documents.select(F.col(quote_identifier(options.id_col)).cast("string").alias("selection_id"),
                                    *[F.col(quote_identifier(c)) for c in missing])
    return scored.select(F.col(quote_identifier(options.id_col)).cast("string").alias("selection_id")).limit(0)


def write_selection(spark, scored, options: SelectOptions) -> None:
    """The selection into `options.output` in one atomic commit: CREATE OR REPLACE TABLE ... AS the query,
    one SQL statement with its parameters. (On Spark Connect a parameterised query handed to `writeTo`
    loses its parameters by the time the server plans the write; one statement runs the same in both.)"""
    register_candidates(spark, scored, options)
    statement = f"CREATE OR REPLACE TABLE {v2_name(options.output)} USING delta AS\n{SELECT_TOP_SQL.read_text()}"
    run_sql(spark, statement, selection_parameters(options))


def selection_parameters(options: SelectOptions) -> dict:
    return {"by_domain": bool(options.by_domain), "use_budget": options.token_budget is not None,
            "fraction": float(options.fraction), "token_budget": int(options.token_budget or 0),
            "min_tokens": int(options.min_tokens or 0)}


def report(spark, options: SelectOptions, scored) -> None:
    """Per group: documents kept of the ok ones and their tokens; then the two best of each group."""
    from pyspark.sql import functions as F

    result = read_table(spark, options.output)
    group = options.domain_col if options.by_domain and options.domain_col in result.columns else None
    by_group = [F.col(quote_identifier(group))] if group else []  # a name from a flag: quoted, never parsed
    candidates = scored.where(F.col("status") == "ok")
    counts = result.groupBy(*by_group).agg(F.count("*").alias("selected"), F.sum("n_tokens").alias("tokens"))
    totals = dict(candidates.groupBy(*by_group).count().collect()) if group else {None: candidates.count()}
    run_log.result(f"selected from {options.input} -> {options.output}")
    for row in counts.orderBy(*(by_group or ["selected"])).collect():
        key = row[group] if group else None
        run_log.result(f"  {key or 'all'}: {row['selected']} of {totals.get(key, 0)} ok documents, "
                       f"{row['tokens']} tokens")
    top = result.where(F.col("rank_in_domain") <= 2).orderBy(*by_group, "rank_in_domain")
    text_col = "text" if "text" in result.columns else None
    run_log.result("top documents:")
    for row in top.collect():
        snippet = " ".join(str(row[text_col]).split())[:70] if text_col else ""
        run_log.result(f"  {row[group] if group else 'all'} #{row['rank_in_domain']} {row[options.id_col]} "
                       f"attention_influence={row['attention_influence']:.4f} {snippet}")


def run(spark, options: SelectOptions) -> None:
    """Select from `options.input` into `options.output` (replaced atomically) and print what was kept."""
    scored = read_table(spark, options.input)
    options = with_recorded_columns(spark, options)
    write_selection(spark, scored, options)
    report(spark, options, scored)


def main(argv=None):
    options = parse_options(argv)
    run(get_spark("attention-influence-select", (options.input, options.output)), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
