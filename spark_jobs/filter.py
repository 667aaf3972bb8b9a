"""Filter before scoring (SPEC §7): the configured rules per domain -> kept + rejected Delta tables.

    python spark_jobs/filter.py --input demo-output/corpus --output demo-output/kept --rejected demo-output/rejected
        [--rules R,... --domain-rules "code=R,...; ..." --skip-domains D,... --thresholds name=value,...]

Which rules run on which domain, and their thresholds, are conf/filter.yaml's (see there, and
`attention_influence.filter_rules`); a wrong name is a one-line error before Spark starts, a domain
named by the flags or --config that the input lacks one before anything is computed. Every input row
ends in exactly one of the two tables. The kept table has the input's columns; the rejected one adds
`rejected_by` (a name of `attention_influence.filter_rules.rule_names`) and `duplicate_of` (for exact
and near-duplicates, the id kept).
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
from dataclasses import dataclass
from pathlib import Path

from attention_influence.filter_rules import (NEAR_DUPLICATE, FilterConfig, filter_config, parse_domain_rules,
                                              parse_domains, parse_rules, parse_thresholds)
from spark_jobs import run_log
from spark_jobs.cli import CONF, Job, JobError, flag, read_yaml, run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import check_table_name, quote_identifier, read_table, write_table

DECIDE_SQL = Path(__file__).with_name("sql") / "filter_decide.sql"
HELPER_COLUMNS = ("filter_id", "filter_text", "content_hash", "filter_rule", "dedup", "near_dedup",
                  "near_duplicate_of")
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
    domain_col: str = flag("domain column choosing each row's rules (absent: every row gets --rules)", required=True)
    rules: str = flag("rule and group names for every domain without its own, comma-separated; none: no rule",
                      required=True)
    domain_rules: str | None = flag("a domain's own rules: 'domain=rules; domain=rules'")
    skip_domains: str | None = flag("domains no rule touches (all their rows kept), comma-separated")
    thresholds: str | None = flag("'[domain:]name=value,...' over the published thresholds")


def checked_rules(options: FilterOptions) -> FilterOptions:
    """A rule, threshold or domain setting that does not parse is a JobError here, before any Spark."""
    rule_config(options)
    return options


JOB = Job("filter", FilterOptions, "Split a document table into kept and rejected rows by the rules chosen per "
                                   "domain: exact and near-duplicates, Gopher's repetition and quality rules, C4's "
                                   "and FineWeb's rules, code rules.", check=checked_rules)
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


def rule_config(options: FilterOptions) -> FilterConfig:
    """The rule sets the options describe; a wrong name is a JobError naming its flag."""
    for setting, parse in (("rules", parse_rules), ("domain_rules", parse_domain_rules),
                           ("skip_domains", parse_domains), ("thresholds", parse_thresholds)):
        try:
            parse(getattr(options, setting))
        except ValueError as exc:
            raise JobError(f"--{setting.replace('_', '-')}: {exc}") from None
    try:
        return filter_config(options.rules, options.domain_rules, options.skip_domains, options.thresholds)
    except ValueError as exc:
        raise JobError(str(exc)) from None


def named_domains(domain_rules: str | None, skip_domains: str | None, thresholds: str | None) -> set[str]:
    """The domains these settings name."""
    return ({*parse_domain_rules(domain_rules), *parse_domains(skip_domains)}
            | {d for d in parse_thresholds(thresholds) if d is not None})


def user_named_domains(options: FilterOptions) -> set[str]:
    """Domains the flags, --config or a notebook named beyond conf/filter.yaml's own (which name domains,
    such as the demo's `code`, that another table may not have)."""
    defaults = read_yaml(CONF / "filter.yaml")
    return (named_domains(options.domain_rules, options.skip_domains, options.thresholds)
            - named_domains(*(defaults.get(key) for key in ("domain_rules", "skip_domains", "thresholds"))))


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
    check_domains(documents, options)


def check_domains(documents, options: FilterOptions) -> None:
    """Every domain the user named occurs in the input (a typo would otherwise change nothing, silently)."""
    from pyspark.sql import functions as F

    named = sorted(user_named_domains(options))
    if not named:
        return
    if options.domain_col not in documents.columns:
        raise JobError(f"domain(s) {', '.join(named)} named, but input {options.input} has no column "
                       f"{options.domain_col} (--domain-col)")
    column = F.col(quote_identifier(options.domain_col))
    present = {r[0] for r in documents.where(column.isin(named)).select(column).distinct().collect()}
    missing = [d for d in named if d not in present]
    if missing:
        raise JobError(f"unknown domain(s) {', '.join(missing)}: input {options.input} has no such "
                       f"{options.domain_col}")


def decide(spark, documents, options: FilterOptions):
    """Every input row once, with `rejected_by` (NULL: kept) and `duplicate_of` by the per-text rules and
    exact duplicates (filter_decide.sql), and the helper columns `with_near_duplicates` reads."""
    from pyspark.sql import functions as F

    from udfs.filters import filter_udf

    config = rule_config(options)
    text = F.col(quote_identifier(options.text_col))  # names from flags are quoted, never parsed
    domain = (F.col(quote_identifier(options.domain_col)).cast("string") if options.domain_col in documents.columns
              else F.lit(None).cast("string"))
    source = (documents
              .withColumn("filter_id", F.col(quote_identifier(options.id_col)))
              .withColumn("filter_text", text)
              .withColumn("filter_columns", filter_udf(config)(text, domain))
              .select("*", "filter_columns.*")
              .drop("filter_columns"))
    source.createOrReplaceTempView("filter_source")
    return spark.sql(DECIDE_SQL.read_text())


def with_near_duplicates(decided):
    """Rows that pass every other rule in a domain that looks for near-duplicates (FineWeb deduplicated
    after filtering): each that is not the smallest id of its MinHash cluster is `near_duplicate`, with
    `duplicate_of` the id kept. Every row stays once."""
    from pyspark.sql import functions as F

    from spark_jobs.near_duplicates import near_duplicate_of

    candidate = F.col("rejected_by").isNull() & F.col("near_dedup")
    judged = near_duplicate_of(decided.where(candidate), "filter_id", "filter_text", column="near_duplicate_of")
    judged = (judged.withColumn("rejected_by", F.when(F.col("near_duplicate_of").isNotNull(), F.lit(NEAR_DUPLICATE)))
              .withColumn("duplicate_of", F.col("near_duplicate_of").cast(decided.schema["duplicate_of"].dataType)))
    others = decided.where(~candidate).withColumn(
        "near_duplicate_of", F.lit(None).cast(judged.schema["near_duplicate_of"].dataType))
    return others.unionByName(judged.select(*others.columns), allowMissingColumns=False)


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
    cached = [decide(spark, documents, options).persist(StorageLevel.MEMORY_AND_DISK)]  # the UDF runs once
    if any(rule_set.near_dedups for rule_set in rule_config(options).rule_sets):
        cached.append(with_near_duplicates(cached[0]).persist(StorageLevel.MEMORY_AND_DISK))
    decided = cached[-1].drop(*HELPER_COLUMNS)
    try:
        domain = (F.col(quote_identifier(options.domain_col)).cast("string")
                  if options.domain_col in documents.columns else F.lit(None).cast("string"))
        rows = (decided.groupBy(domain.alias("domain"), F.coalesce("rejected_by", F.lit("kept")).alias("outcome"))
                .count().collect())
        write_table(decided.where(F.col("rejected_by").isNull()).drop(*ADDED_COLUMNS), options.output)
        write_table(decided.where(F.col("rejected_by").isNotNull()), options.rejected)
    finally:
        for frame in cached:
            frame.unpersist()
    by_domain: dict[str | None, dict[str, int]] = {}
    for row in rows:
        by_domain.setdefault(row["domain"], {})[row["outcome"]] = row["count"]
    counts = outcome_counts(by_domain)
    report(options, counts, by_domain)
    return counts


def outcome_counts(by_domain: dict[str | None, dict[str, int]]) -> dict[str, int]:
    """Documents per outcome (`kept` or a rule) over all domains."""
    counts: dict[str, int] = {}
    for outcomes in by_domain.values():
        for outcome, count in outcomes.items():
            counts[outcome] = counts.get(outcome, 0) + count
    return counts


def rejected_text(outcomes: dict[str, int]) -> str:
    """`rule count, ...` of the rejections, most first."""
    return ", ".join(f"{rule} {count}" for rule, count in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0]))
                     if rule != "kept")


def domain_line(domain: str | None, outcomes: dict[str, int]) -> str:
    """`  domain: N documents, K kept (rejected: rule count, ...)` for one domain's outcomes."""
    rejected = rejected_text(outcomes)
    return (f"  {domain or '(no domain)'}: {sum(outcomes.values())} documents, {outcomes.get('kept', 0)} kept"
            + (f" (rejected: {rejected})" if rejected else ""))


def report(options: FilterOptions, counts: dict[str, int], by_domain: dict[str | None, dict[str, int]]) -> None:
    total = sum(counts.values())
    kept = counts.get("kept", 0)
    run_log.result(f"filtered {options.input}: {total} documents, {kept} kept -> {options.output}, "
                   f"{total - kept} rejected -> {options.rejected}")
    for rule, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if rule != "kept":
            run_log.result(f"  {rule}: {count}")
    if len(by_domain) > 1 or None not in by_domain:
        for domain in sorted(by_domain, key=lambda d: (d is None, d or "")):
            run_log.result(domain_line(domain, by_domain[domain]))


def main(argv=None):
    options = parse_options(argv)
    run(get_spark("attention-influence-filter", (options.input, options.output, options.rejected)), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
