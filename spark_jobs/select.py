"""Select the top documents with Spark SQL (SPEC §4): scored Delta -> window functions -> new Delta table.

    python spark_jobs/select.py --input demo-output/scored --output demo-output/selected --fraction 0.2
"""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
from pathlib import Path

from spark_jobs.common import (JobError, fraction, get_spark, new_parser, parse_flags, positive_int, quote_identifier,
                               read_table, replace_table, run, table_exists, table_properties)

SELECT_TOP_SQL = Path(__file__).with_name("sql") / "select_top.sql"


def build_parser():
    p = new_parser("Keep the documents with the highest attention_influence, per domain by default.")
    p.add_argument("--input", help="scored Delta path or catalog table")
    p.add_argument("--output", help="Delta path or catalog table for the selection (replaced atomically)")
    p.add_argument("--fraction", type=fraction, help="share of each domain's ok documents to keep")
    p.add_argument("--token-budget", type=positive_int, help="keep this many tokens instead of a fraction")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--by-domain", dest="by_domain", action="store_true", help="rank within each domain")
    group.add_argument("--global", dest="by_domain", action="store_false", help="rank over the whole table")
    p.add_argument("--min-tokens", type=int, help="shorter documents are not candidates")
    p.add_argument("--id-col", help="id column (default: as recorded by score.py)")
    p.add_argument("--domain-col", help="domain column (default: as recorded by score.py)")
    return p


def select_top(spark, scored, args):
    """The selection as a DataFrame; the SQL text is in spark_jobs/sql/select_top.sql."""
    from pyspark.sql import functions as F

    missing = [c for c in ("attention_influence", "status", "n_tokens") if c not in scored.columns]
    if args.id_col not in scored.columns:
        missing.append(args.id_col)
    if missing:
        raise JobError(f"input {args.input} is not a scored table: no column(s) {', '.join(missing)}")
    domain = F.col(quote_identifier(args.domain_col)) if args.domain_col in scored.columns else F.lit(None)
    source = (scored.withColumn("selection_id", F.col(quote_identifier(args.id_col)).cast("string"))
              .withColumn("selection_domain", F.coalesce(domain.cast("string"), F.lit(""))))
    source.createOrReplaceTempView("candidates_source")
    # Delta's SQL parser drops named parameters on Spark >= 4.1 (delta-io/delta#7640) unless
    # they are substituted as constants; set it here too for sessions not started from conf/spark.
    spark.conf.set("spark.sql.legacy.parameterSubstitution.constantsOnly", "true")
    params = {"by_domain": bool(args.by_domain), "use_budget": args.token_budget is not None,
              "fraction": float(args.fraction), "token_budget": int(args.token_budget or 0),
              "min_tokens": int(args.min_tokens or 0)}
    return spark.sql(SELECT_TOP_SQL.read_text(), args=params)


def main(argv=None):
    args = parse_flags("select", build_parser(), argv)
    from pyspark.sql import functions as F

    spark = get_spark("attention-influence-select")
    scored = read_table(spark, args.input)
    recorded = table_properties(spark, args.input) if table_exists(spark, args.input) else {}
    args.id_col = args.id_col or recorded.get("attention_influence.id_col", "id")
    args.domain_col = args.domain_col or recorded.get("attention_influence.domain_col", "domain")
    selected = select_top(spark, scored, args)
    replace_table(selected, args.output)

    result = read_table(spark, args.output)
    group = args.domain_col if args.by_domain and args.domain_col in result.columns else None
    candidates = scored.where(F.col("status") == "ok")
    counts = (result.groupBy(group).agg(F.count("*").alias("selected"), F.sum("n_tokens").alias("tokens"))
              if group else result.agg(F.count("*").alias("selected"), F.sum("n_tokens").alias("tokens")))
    totals = dict(candidates.groupBy(group).count().collect()) if group else {None: candidates.count()}
    print(f"selected from {args.input} -> {args.output}")
    for row in counts.orderBy(group or "selected").collect():
        key = row[group] if group else None
        print(f"  {key or 'all'}: {row['selected']} of {totals.get(key, 0)} ok documents, {row['tokens']} tokens")
    top = result.where(F.col("rank_in_domain") <= 2).orderBy(*( [group] if group else []), "rank_in_domain")
    text_col = "text" if "text" in result.columns else None
    print("top documents:")
    for row in top.collect():
        snippet = " ".join(str(row[text_col]).split())[:70] if text_col else ""
        print(f"  {row[group] if group else 'all'} #{row['rank_in_domain']} {row[args.id_col]} "
              f"attention_influence={row['attention_influence']:.4f} {snippet}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
