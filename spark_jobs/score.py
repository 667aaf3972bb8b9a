"""Score documents with AttentionInfluence: read Delta -> pandas UDF -> slices committed into Delta -> summary.

    python spark_jobs/score.py --input demo-output/corpus --output demo-output/scored \
        --model fixtures/tiny-llama --heads demo-output/heads.json

Where things happen: a row is scored in udfs/influence.py (the pandas UDF); the run is planned in
score_plan.py; slices are cut in slices.py and committed in scores_table.py (`ScoresTable.commit`); every
line is printed through run_log.py.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
import time
from dataclasses import dataclass, field
from functools import partial

from attention_influence.errors import first_line
from spark_jobs import run_log
from spark_jobs.cli import Job, ScorerFlags, dumps, flag, positive_float, positive_int, run as run_job, task_failure_line
from spark_jobs.progress import Progress
from spark_jobs.score_plan import ModelCheck, ScorePlan, check_model_and_heads, dry_run, plan
from spark_jobs.session import (delete_path, get_spark, is_connect, is_local_master, session_settings,
                                task_slots)
from spark_jobs.slices import SliceWork, Slicer, StopSignal
from spark_jobs.tables import SCORED_AT_COLUMN, SCORER_COLUMN, data_file_name, read_table, table_detail, write_table
from spark_jobs.watch import COMPACT_AFTER_SLICES, watch


@dataclass(frozen=True, kw_only=True)
class ScoreOptions(ScorerFlags):
    """What one scoring run needs: one field per flag (defaults: conf/score.yaml)."""

    input: str = flag("Delta path (contains '/') or catalog table of documents", required=True)
    output: str = flag("Delta path or catalog table of scores", required=True)
    id_col: str = flag("unique document id column")
    text_col: str = flag("document text column")
    domain_col: str = flag("domain column (optional in the input)")
    carry_cols: str | None = flag("comma-separated input columns copied to the output, '*' for all")
    arrow_batch_size: int | None = flag("documents per Arrow batch handed to the scoring function; default the "
                                        "session's spark.sql.execution.arrow.maxRecordsPerBatch", type=positive_int)
    partitions: int | None = flag("repartition the documents to this many tasks", type=positive_int)
    token_losses: bool = flag("store per-token losses", switch=True)
    mode: str = flag("incremental: score what is not yet scored; overwrite: replace the output at the end",
                     choices=["incremental", "overwrite"])
    fused: bool = flag("share the layers below the first masked layer between both models", switch=True)
    max_chars: int = flag("longer documents get status 'error'", type=positive_int)
    dry_run: bool = flag("print what would be scored (documents, estimated tokens, partitions, scorer); write nothing",
                         once=True)
    retry_errors: bool = flag("incremental: also rescore rows whose status is 'error' for the current scorer",
                              switch=True)
    commit_attempts: int | None = flag("attempts of each slice's Delta commit when concurrent writers conflict",
                                       type=positive_int)
    slice_documents: int | None = flag("commit scores in slices of at most about this many documents; default: "
                                       "sized to --slice-minutes of measured work", type=positive_int)
    slice_minutes: float = flag("with no --slice-documents: the work one slice holds, measured as the run goes",
                                type=positive_float)
    watch: bool = flag("keep running: score documents as they are appended to the input, until stopped", switch=True)
    watch_interval: float = flag("--watch: seconds between looks at the input", type=positive_float)
    state_dir: str | None = flag("where the run keeps its stream checkpoint and an overwrite's staging table; "
                                 "default _attention_influence_state/ next to the output (a catalog output: under "
                                 "the warehouse)")


JOB = Job("score", ScoreOptions, "Score every document of a Delta table by AttentionInfluence (SPEC §3).")
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options

# Several tasks per core (or GPU) in each slice: the slice ends with its last task, and while it runs the
# other slots idle, so smaller tasks shorten that tail at every slice boundary (benchmarks/slicing.py).
TASKS_PER_SLOT = 8


def default_partitions(spark, documents: int) -> int:
    """Scoring tasks for `documents`: TASKS_PER_SLOT per task slot, never more than the documents."""
    return max(1, min(documents, TASKS_PER_SLOT * task_slots(spark)))


# ---------------------------------------------------------------- score one slice

@dataclass(frozen=True)
class ScoreSummary:
    """What a run did: documents by status, tokens of the ok ones, seconds, slices, the scorer and the table."""

    output: str
    fingerprint: str
    by_status: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    elapsed: float = 0.0
    dry_run: bool = False
    slices: int = 0
    committed_before: int = 0
    total: int = 0

    @property
    def documents(self) -> int:
        return sum(self.by_status.values())


def scoring_settings(options: ScoreOptions, plan: ScorePlan, spark=None):
    """What the scoring function needs on the executors. Their per-task and per-worker lines with --verbose,
    or always where the executors are not this process's (a cluster: their stderr is their log)."""
    from udfs.influence import ScoringSettings

    verbose = run_log.verbose() or (spark is not None and not is_local_master(spark))
    return ScoringSettings(verbose=verbose, model=options.model, heads=plan.heads, max_seq_len=plan.max_seq_len,
                           dtype=plan.dtype, text_col=options.text_col, carry_cols=tuple(plan.carry),
                           batch_tokens=plan.batch_tokens, token_losses=bool(options.token_losses),
                           fused=bool(options.fused), max_chars=options.max_chars, revision=options.revision,
                           masking=options.masking, trust_remote_code=bool(options.trust_remote_code),
                           allow_pickle_weights=bool(options.allow_pickle_weights))


def scored_rows(documents, settings, plan: ScorePlan, partitions: int, counters=None):
    """The score columns for `documents`, with the scorer and the time (not computed until an action)."""
    from pyspark.sql import functions as F

    from udfs.influence import score_documents

    return (score_documents(documents.repartition(partitions), settings, counters)
            .withColumn(SCORER_COLUMN, F.lit(plan.fingerprint))
            .withColumn(SCORED_AT_COLUMN, F.current_timestamp()))


def compute_scores(options: ScoreOptions, plan: ScorePlan, documents, count: int, number: int):
    """One slice's scored rows, computed once, and their (status, documents, tokens) counts.

    The rows are materialized with `localCheckpoint` (as Delta's MERGE materializes its own source):
    a MERGE does not read a `persist`ed source from the cache and would run the UDF again, once or
    twice (measured: every document of a MERGE was scored twice before). A lost executor between the
    scoring and the MERGE fails the slice; the rerun resumes after the slices committed before it.
    An --arrow-batch-size is this job's setting only while the slice's scoring stage runs.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = documents.sparkSession
    partitions = options.partitions or default_partitions(spark, count)
    progress = Progress(spark, count, label=f"slice {number}")
    scored = scored_rows(documents, scoring_settings(options, plan, spark), plan, partitions, progress.counters)
    settings = dict(progress.settings)
    if options.arrow_batch_size:  # else the session's (the Spark profile's: 256 local, 2048 on GPUs)
        settings["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(options.arrow_batch_size)
    with session_settings(spark, settings):
        with progress:  # prints documents, tokens, tokens/s and ETA every few seconds while the stage runs
            scored = scored.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)
    stats = scored.groupBy("status").agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens")).collect()
    return scored, [(r["status"], r["documents"], r["tokens"]) for r in stats]


def announce(options: ScoreOptions, plan: ScorePlan) -> None:
    where = "its staging table (a killed overwrite run, resumed)" if plan.target != options.output else options.output
    resumed = (f"{plan.committed_before} of {plan.total} documents already committed for this scorer in {where}; "
               if plan.committed_before else "")
    run_log.say(f"scoring {options.input} with {options.model} ({len(plan.heads)} heads masked {options.masking}, "
                f"max_seq_len {plan.max_seq_len}, {plan.dtype}) -> {options.output} [{options.mode}"
                f"{', watch' if options.watch else ''}]: {resumed}{plan.to_score} documents to score, in slices of "
                + (f"about {options.slice_documents} documents" if options.slice_documents
                   else f"about {options.slice_minutes:g} minutes of work"))


def report(summary: ScoreSummary) -> None:
    """The run's last two lines on stdout (make demo keeps them for its summary's tokens/s)."""
    elapsed = summary.elapsed
    run_log.result(f"scored {summary.documents} documents ({summary.tokens} tokens) in {elapsed:.1f}s: "
                   f"{summary.tokens / elapsed if elapsed else 0:.0f} tokens/s; status {dumps(summary.by_status)}; "
                   f"{summary.slices} slice(s), {summary.committed_before} committed before this run")
    run_log.result(f"scorer {summary.fingerprint}; wrote {summary.output}")


# ---------------------------------------------------------------- the job

def run(spark, options: ScoreOptions, model: ModelCheck | None = None, stop: StopSignal | None = None) -> ScoreSummary:
    """Plan, score and commit slice by slice, report, on `spark`; `model` is check_model_and_heads(options)
    when main did it already; `stop` (main's signal handlers) asks for a stop at the next slice boundary."""
    model = model or check_model_and_heads(options)
    planned = plan(spark, options, model)
    if options.dry_run:
        dry_run(options, planned)
        return ScoreSummary(output=options.output, fingerprint=planned.fingerprint, dry_run=True)
    announce(options, planned)
    table = planned.table
    table.ensure(scored_rows(planned.documents.limit(0), scoring_settings(options, planned), planned, 1))
    table.open_slices(planned.target_version, planned.replaces_rows)
    detail = table_detail(spark, options.input)
    slicer = Slicer(SliceWork(
        spark=spark, source=options.input, table=table, id_col=options.id_col,
        score=partial(compute_scores, options, planned),
        fresh_files=planned.fresh_files, checkpoint=planned.checkpoint,
        slice_documents=options.slice_documents, slice_seconds=60.0 * options.slice_minutes,
        slots=task_slots(spark), docs_per_file=planned.total / max(1, detail["numFiles"] or 1),
        total=planned.total, committed_before=planned.committed_before, to_score=planned.to_score,
        stop=stop or StopSignal()))
    read_input = lambda: read_table(spark, options.input)  # noqa: E731
    if options.watch:
        watch(slicer, read_input, options.watch_interval)
        # returns only by Stopped (or an error)
    elif planned.to_score:
        if not slicer.run_stream() and is_connect(spark):
            slice_input_files(spark, slicer, options, planned, detail)
        slicer.commit_remaining(read_input)  # the one full comparison after the stream: nothing missed
    if planned.target != options.output:  # overwrite: one atomic replace from the complete staging table
        write_table(read_table(spark, planned.target), options.output, planned.properties)
        remove_state(spark, planned.target)
        remove_state(spark, planned.checkpoint)
    elif slicer.slices > COMPACT_AFTER_SLICES:
        table.compact()
    tokens = slicer.tokens
    summary = ScoreSummary(output=options.output, fingerprint=planned.fingerprint, by_status=dict(slicer.by_status),
                           tokens=tokens, elapsed=time.time() - slicer.started, slices=slicer.slices,
                           committed_before=planned.committed_before, total=planned.total)
    report(summary)
    return summary


def slice_input_files(spark, slicer: Slicer, options: ScoreOptions, plan: ScorePlan, detail) -> None:
    """Spark Connect: the input's fresh files in slices, each read alone as Parquet (slices.run_files),
    when the input is a plain Delta table (no partition columns, column mapping or deletion vectors:
    then its data files hold exactly its rows); else every slice is cut by the id's hash from the whole
    input, as `commit_remaining` does, rescanning the input each time."""
    properties = detail["properties"] or {}
    features = set(detail["tableFeatures"] or []) if "tableFeatures" in detail.asDict() else set()
    plain = (not detail["partitionColumns"] and properties.get("delta.columnMapping.mode", "none") == "none"
             and "deletionVectors" not in features)
    if not plain:
        run_log.say(f"Spark Connect: {options.input} is partitioned or uses column mapping or deletion vectors: "
                    f"slices are cut from the whole input by a hash of the id (each rescans the input)")
        return
    schema = plan.documents.schema
    paths = sorted(path for path in plan.documents.inputFiles() if data_file_name(path) in plan.fresh_files)
    run_log.say(f"Spark Connect: {len(paths)} input files hold documents with nothing committed; slices read "
                f"a few files each")
    slicer.run_files(lambda group: spark.read.schema(schema).parquet(*group), paths)


def remove_state(spark, path: str) -> None:
    """Delete a staging table or checkpoint the run no longer needs (left behind is harmless: a later run
    starts afresh)."""
    try:
        delete_path(spark, path)
    except Exception as exc:  # noqa: BLE001
        run_log.warn(f"could not remove {path} ({first_line(exc)[:200]})")


def main(argv=None):
    """Flags -> options; the model and heads are checked before Spark starts; SIGTERM and Ctrl-C stop
    at the next slice boundary (exit 75), a second one at once."""
    options = parse_options(argv)
    model = check_model_and_heads(options)
    stop = StopSignal()
    with stop.installed():
        run(get_spark("attention-influence-score", (options.input, options.output)), options, model, stop)
    return 0


# A scoring task that failed every retry aborts the run; what it means for the output:
task_failure_line = partial(task_failure_line, what="scoring task", consequence=(
    "the run was aborted; slices committed before it stay, this slice was not committed (rerun to resume)"))

if __name__ == "__main__":
    sys.exit(run_job(main, task_failure=task_failure_line))
