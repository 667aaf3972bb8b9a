"""Score documents with AttentionInfluence: read Delta -> pandas UDF -> MERGE into Delta -> summary.

    python spark_jobs/score.py --input demo-output/corpus --output demo-output/scored \
        --model fixtures/tiny-llama --heads demo-output/heads.json
"""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from spark_jobs import common, table_contract
from spark_jobs.common import (CommitConflict, JobError, check_table_name, create_table, dumps, first_line, get_spark,
                               new_parser, options_from, parse_flags, positive_float, positive_int, quote_identifier,
                               read_table, replace_table, session_settings, set_table_properties, table_detail,
                               table_exists, table_properties, v2_name)
from spark_jobs.progress import Progress
from spark_jobs.slice_commits import SliceCommits, is_commit_conflict, latest_version
from spark_jobs.slices import COMPACT_AFTER_SLICES, SliceWork, Slicer, StopSignal, watch
from spark_jobs.table_contract import SCORED_AT_COLUMN, SCORER_COLUMN


# Default padded tokens per forward pass (docs/benchmarks.md): on an H100 16,384 peaked at 42 GiB with the
# paper's 1.3B shape, within 1.3% of the fastest that fits; on CPUs small batches stay in cache and
# SmolLM2-135M scored fastest at 1,024 (1.2x 4,096).
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 1024


def build_parser():
    p = new_parser("Score every document of a Delta table by AttentionInfluence (SPEC §3).")
    p.add_argument("--input", help="Delta path (contains '/') or catalog table of documents")
    p.add_argument("--output", help="Delta path or catalog table of scores")
    p.add_argument("--model", help="local model directory, .gguf file or hub id (the strong model)")
    p.add_argument("--revision", help="model revision on the hub")
    p.add_argument("--heads", help="heads JSON written by detect_heads.py")
    p.add_argument("--id-col", help="unique document id column")
    p.add_argument("--text-col", help="document text column")
    p.add_argument("--domain-col", help="domain column (optional in the input)")
    p.add_argument("--carry-cols", help="comma-separated input columns copied to the output, '*' for all")
    p.add_argument("--max-seq-len", type=positive_int, help="window length; default the model's context length")
    p.add_argument("--masking", choices=["uniform", "zero-output"],
                   help="uniform: masked heads attend equally to the tokens they see (the paper); "
                        "zero-output: their output is zeroed")
    p.add_argument("--batch-tokens", type=positive_int,
                   help="padded tokens per forward pass; default %d on GPU clusters, %d on CPUs" % (GPU_BATCH_TOKENS, CPU_BATCH_TOKENS))
    p.add_argument("--arrow-batch-size", type=positive_int, help="documents per Arrow batch")
    p.add_argument("--partitions", type=positive_int, help="repartition the documents to this many tasks")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--token-losses", action=argparse.BooleanOptionalAction, help="store per-token losses")
    p.add_argument("--mode", choices=["incremental", "overwrite"])
    p.add_argument("--fused", action=argparse.BooleanOptionalAction,
                   help="share the layers below the first masked layer between both models")
    p.add_argument("--max-chars", type=positive_int, help="longer documents get status 'error'")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be scored (documents, estimated tokens, partitions, scorer); write nothing")
    p.add_argument("--retry-errors", action=argparse.BooleanOptionalAction,
                   help="incremental: also rescore rows whose status is 'error' for the current scorer")
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction,
                   help="allow a model that needs its own Python code (runs that code on every executor)")
    p.add_argument("--allow-pickle-weights", action=argparse.BooleanOptionalAction,
                   help="allow pickle weights (pytorch_model.bin), which can run code when loaded")
    p.add_argument("--commit-attempts", type=positive_int,
                   help="attempts of each slice's Delta commit when concurrent writers conflict")
    p.add_argument("--slice-documents", type=positive_int,
                   help="commit scores in slices of at most about this many documents; default: sized to "
                        "--slice-minutes of measured work")
    p.add_argument("--slice-minutes", type=positive_float,
                   help="with no --slice-documents: the work one slice holds, measured as the run goes")
    p.add_argument("--watch", action=argparse.BooleanOptionalAction,
                   help="keep running: score documents as they are appended to the input, until stopped")
    p.add_argument("--watch-interval", type=positive_float, help="--watch: seconds between looks at the input")
    p.add_argument("--state-dir",
                   help="where the run keeps its stream checkpoint and an overwrite's staging table; default "
                        "_attention_influence_state/ next to the output (a catalog output: under the warehouse)")
    return p


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """What one scoring run needs; the flags of build_parser(), one field each (defaults: conf/score.yaml)."""

    input: str
    output: str
    model: str
    heads: str
    revision: str | None
    id_col: str
    text_col: str
    domain_col: str
    carry_cols: str | None
    max_seq_len: int | None
    masking: str
    batch_tokens: int | None
    arrow_batch_size: int
    partitions: int | None
    dtype: str
    token_losses: bool
    mode: str
    fused: bool
    max_chars: int
    dry_run: bool
    retry_errors: bool
    trust_remote_code: bool
    allow_pickle_weights: bool
    commit_attempts: int | None
    slice_documents: int | None
    slice_minutes: float
    watch: bool
    watch_interval: float
    state_dir: str | None


REQUIRED = ("input", "output", "model", "heads")


def parse_options(argv: list[str] | None = None, settings: dict | None = None) -> ScoreOptions:
    """Options from flags over `--config` over `settings` over conf/score.yaml (the edge of the job)."""
    return options_from(ScoreOptions, parse_flags("score", build_parser(), argv, settings), REQUIRED)


def options(**settings) -> ScoreOptions:
    """Options for a notebook or a test: conf/score.yaml's defaults with `settings` over them."""
    return parse_options([], settings)


# Several tasks per core (or GPU) in each slice: the slice ends with its last task, and while it runs the
# other slots idle, so smaller tasks shorten that tail at every slice boundary (benchmarks/slicing.py).
TASKS_PER_SLOT = 8
DRY_RUN_SAMPLE = 64  # documents tokenized on the driver to estimate a dry run's tokens


def default_partitions(spark, documents: int) -> int:
    """Scoring tasks for `documents`: TASKS_PER_SLOT per task slot, never more than the documents.

    A slot is a core, or a GPU where a task takes a whole GPU (conf/spark/gpu.conf sets
    spark.task.cpus to the executor's cores, so there is one slot per executor and GPU).
    """
    return max(1, min(documents, TASKS_PER_SLOT * task_slots(spark)))


@dataclass(frozen=True)
class ModelCheck:
    """What is known about the model before Spark starts: the heads to mask and the window length."""

    heads: tuple[tuple[int, int], ...]
    max_seq_len: int


def check_model_and_heads(options: ScoreOptions) -> ModelCheck:
    """Table names, masking, model config and heads, checked before Spark starts or a task runs."""
    from attention_influence.loading import check_untrusted_model, context_length, load_config
    from attention_influence.masking import MASKING_MODES
    from attention_influence.retrieval import load_heads

    check_table_name(options.input), check_table_name(options.output)
    if options.watch and options.mode == "overwrite":
        raise JobError("--watch scores appended documents into the output as they come: use it with "
                       "--mode incremental (an overwrite replaces the output once, at the end)")
    if options.masking not in MASKING_MODES:  # a config file's value; the flag itself has choices
        raise JobError(f"masking must be one of {', '.join(MASKING_MODES)}, got {options.masking!r}")
    heads = load_heads(options.heads)
    check_untrusted_model(options.model, bool(options.trust_remote_code), bool(options.allow_pickle_weights))
    config = load_config(options.model, options.revision, bool(options.trust_remote_code))
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise JobError(f"heads out of range for {options.model} ({n_layers} layers x {n_heads} heads): {bad[:5]}")
    return ModelCheck(tuple(heads), options.max_seq_len or context_length(config))


def scorer_identity(options: ScoreOptions, heads, revision: str, dtype: str, max_seq_len: int) -> tuple[str, dict]:
    """(fingerprint, readable form) of everything that changes a score.

    A local checkpoint is identified by its content digest (`revision`), not its
    path, so `./model` and `/abs/model` do not force a rescore; a hub model by id
    and commit.
    """
    readable = {"model": options.model, "model_revision": revision, "heads": [list(h) for h in heads],
                "max_seq_len": max_seq_len, "masking": options.masking, "dtype": dtype}
    identity = dict(readable, model=None if revision.startswith("local-") else options.model)
    return "ai1-" + hashlib.sha256(dumps(identity).encode()).hexdigest()[:16], readable


def output_columns() -> set[str]:
    """Every column score.py writes besides the carried ones: the UDF's and the two added here."""
    from udfs.influence import SCORE_COLUMNS, TOKEN_LOSS_COLUMNS

    return {name for name, _ in SCORE_COLUMNS + TOKEN_LOSS_COLUMNS} | set(table_contract.ADDED_COLUMNS)


def check_input(df, options: ScoreOptions) -> list[str]:
    """Columns to carry; refuse missing columns, null and duplicate ids before any scoring."""
    from pyspark.sql import functions as F

    missing = [c for c in (options.id_col, options.text_col) if c not in df.columns]
    if missing:
        raise JobError(f"input {options.input} has no column(s) {', '.join(missing)} "
                       f"(columns: {', '.join(df.columns)})")
    text_type = df.schema[options.text_col].dataType.simpleString()
    if text_type not in ("string", "binary"):
        raise JobError(f"text column {options.text_col} is {text_type}, expected STRING")
    if options.carry_cols in (None, "*"):
        carry = list(df.columns)
    else:
        carry = [c.strip() for c in options.carry_cols.split(",") if c.strip()]
        carry += [c for c in (options.id_col, options.domain_col) if c in df.columns and c not in carry]
        unknown = [c for c in carry if c not in df.columns]
        if unknown:
            raise JobError(f"--carry-cols names missing column(s): {', '.join(unknown)}")
    backticked = [c for c in carry if "`" in c]
    if backticked:  # PySpark's mapInPandas parses column names: a backtick cannot be addressed
        raise JobError(f"column name(s) with a backtick cannot be scored: {', '.join(backticked)}; "
                       f"rename them or leave them out with --carry-cols")
    clash = [c for c in carry if c in output_columns()]
    if clash:
        raise JobError(f"input column(s) {', '.join(clash)} clash with score columns; drop or rename them")
    id_col = F.col(quote_identifier(options.id_col))  # names from flags are always quoted
    # One pass for both checks: the null id is a group of its own.
    problems = (df.groupBy(id_col.alias("_id")).count()
                .where((F.col("count") > 1) | F.col("_id").isNull()).limit(4).collect())
    if any(r[0] is None for r in problems):
        raise JobError(f"input has null ids in column {options.id_col}")
    if problems:
        examples = ", ".join(repr(r[0]) for r in problems[:3])
        raise JobError(f"input has duplicate ids in column {options.id_col} (e.g. {examples}); ids must be unique")
    return carry


# ---------------------------------------------------------------- plan what to score

@dataclass(frozen=True)
class ScorePlan:
    """The documents still to score under this scorer, where they go, and how: decided before any model runs."""

    documents: object  # DataFrame: the whole input
    total: int
    committed_before: int  # documents of the input already committed for this scorer (in `target`)
    to_score: int
    target: str            # the output (incremental), or an overwrite run's staging table
    carry: list[str]
    heads: tuple[tuple[int, int], ...]
    max_seq_len: int
    dtype: str
    batch_tokens: int
    fingerprint: str
    readable: dict
    state_dir: str
    run_key: str           # names this run's checkpoint and staging: same input, output, scorer, mode
    output: str
    replaces_rows: bool    # the target holds rows a slice may replace (another scorer's; errors to retry)
    target_version: int = -1  # the target's Delta version the plan read (-1: no target yet)
    fresh_files: frozenset = frozenset()  # input files (by name) holding no document committed at that version

    @property
    def checkpoint(self) -> str:
        """The stream's checkpoint: one per input, output, scorer and mode."""
        return f"{self.state_dir}/{'overwrite' if self.target != self.output else 'incremental'}-{self.run_key}-stream"


def state_dir_of(spark, options: ScoreOptions) -> str:
    """`--state-dir`, else `_attention_influence_state/<name>` beside a path output (never inside it: a
    Delta table's folder is Delta's), else under the warehouse for a catalog output."""
    if options.state_dir:
        return options.state_dir.rstrip("/")
    if common.is_path(options.output):
        output = os.path.abspath(options.output) if "://" not in options.output else options.output.rstrip("/")
        parent, name = output.rsplit("/", 1)
        return f"{parent}/_attention_influence_state/{name}"
    warehouse = spark.conf.get("spark.sql.warehouse.dir", "spark-warehouse").rstrip("/")
    return f"{warehouse}/_attention_influence_state/{options.output}"


def committed(spark, target: str, fingerprint: str, options: ScoreOptions, version: int | None = None):
    """Ids of `target` that hold a current score (this scorer; not an error row under --retry-errors),
    as of Delta `version` when given."""
    from pyspark.sql import functions as F

    table = read_table(spark, target)
    if version is not None:
        reader = spark.read.format("delta").option("versionAsOf", int(version))
        table = reader.load(target) if common.is_path(target) else reader.table(target)
    done = table.where(F.col(SCORER_COLUMN) == fingerprint)
    if options.retry_errors:
        done = done.where(F.col("status") != "error")
    return done.select(F.col(quote_identifier(options.id_col)).alias("committed_id"))


def not_committed(documents, target: str, fingerprint: str, options: ScoreOptions):
    """`documents` less the ids `target` already holds for this scorer (the run's one anti-join)."""
    from pyspark.sql import functions as F

    spark = documents.sparkSession  # a stream's micro-batch lives in the stream's own session
    if not table_exists(spark, target):
        return documents
    return documents.join(committed(spark, target, fingerprint, options),
                          F.col(quote_identifier(options.id_col)) == F.col("committed_id"), how="left_anti")


def plan(spark, options: ScoreOptions, model: ModelCheck) -> ScorePlan:
    """Read the input, check it, and count what the target already holds for this scorer."""
    from attention_influence.loading import model_revision, resolve_dtype

    gpu_cluster = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    dtype = resolve_dtype(options.dtype, "cuda" if gpu_cluster else "cpu")
    batch_tokens = options.batch_tokens or (GPU_BATCH_TOKENS if gpu_cluster else CPU_BATCH_TOKENS)
    fingerprint, readable = scorer_identity(options, model.heads, model_revision(options.model, options.revision),
                                            dtype, model.max_seq_len)
    documents = read_table(spark, options.input)
    carry = check_input(documents, options)
    state_dir = state_dir_of(spark, options)
    run_key = hashlib.sha256(dumps({"input": _absolute(options.input), "output": _absolute(options.output),
                                    "scorer": fingerprint, "mode": options.mode}).encode()).hexdigest()[:16]
    target = options.output if options.mode == "incremental" else f"{state_dir}/overwrite-{run_key}-staging"
    started = time.time()
    target_version = latest_version(spark, target)
    files = input_files(documents)
    total, committed_by_file = committed_per_file(spark, documents, target, target_version, fingerprint, options)
    committed_before = sum(committed_by_file.values())
    replaces_rows = holds_replaceable_rows(spark, target, fingerprint, options)
    print(f"plan: {total} documents in {len(files)} input files, {committed_before} already committed for this "
          f"scorer (in {len(committed_by_file)} of the files); the ids of input and output read once, "
          f"{time.time() - started:.1f}s", file=sys.stderr, flush=True)
    return ScorePlan(documents=documents, total=total, committed_before=committed_before,
                     to_score=total - committed_before, target=target, carry=carry, heads=model.heads,
                     max_seq_len=model.max_seq_len, dtype=dtype, batch_tokens=batch_tokens, fingerprint=fingerprint,
                     readable=readable, state_dir=state_dir, run_key=run_key, output=options.output,
                     replaces_rows=replaces_rows, target_version=target_version,
                     fresh_files=frozenset(files - set(committed_by_file)))


def input_files(documents) -> set[str]:
    """The data files of a Delta read, by file name (Delta names each file uniquely)."""
    return {path.rsplit("/", 1)[-1] for path in documents.inputFiles()}


def committed_per_file(spark, documents, target: str, version: int, fingerprint: str,
                       options: ScoreOptions) -> tuple[int, dict[str, int]]:
    """(documents in the input, {input file name: its documents committed for this scorer at `version`}),
    in one pass over the input's ids and the target's: what slices.py needs to skip the anti-join for
    input files that held nothing committed (spark_jobs/slice_commits.py)."""
    from pyspark.sql import functions as F

    ids = documents.select(F.col(quote_identifier(options.id_col)).alias("_id"),
                           F.col("_metadata.file_path").alias("_file"))
    if version < 0:
        return ids.count(), {}
    done = committed(spark, target, fingerprint, options, version)
    rows = (ids.join(done, F.col("_id") == F.col("committed_id"), "left")
            .groupBy("_file").agg(F.count(F.lit(1)).alias("documents"), F.count("committed_id").alias("committed"))
            .collect())
    total = sum(r["documents"] for r in rows)
    return total, {r["_file"].rsplit("/", 1)[-1]: r["committed"] for r in rows if r["committed"]}


def holds_replaceable_rows(spark, target: str, fingerprint: str, options: ScoreOptions) -> bool:
    """Whether a slice's MERGE may have to replace rows (another scorer's, or errors under --retry-errors);
    if not, every slice is an insert-only MERGE, which Delta runs as an anti-join and an append."""
    from pyspark.sql import functions as F

    if not table_exists(spark, target):
        return False
    replaceable = F.col(SCORER_COLUMN) != fingerprint
    if options.retry_errors:
        replaceable = replaceable | (F.col("status") == "error")
    return bool(read_table(spark, target).where(replaceable).limit(1).count())


def _absolute(ref: str) -> str:
    return os.path.abspath(ref) if common.is_path(ref) and "://" not in ref else ref


def dry_run(options: ScoreOptions, plan: ScorePlan) -> None:
    """What a run would do, from counts and a driver-side tokenization of a sample; writes nothing."""
    from transformers import AutoTokenizer

    todo = not_committed(plan.documents, plan.target, plan.fingerprint, options)
    sample = []
    if plan.to_score:
        fraction = min(1.0, 2.0 * DRY_RUN_SAMPLE / plan.to_score)
        sample = [r[0] for r in todo.sample(fraction=fraction, seed=0).select(options.text_col)
                  .limit(DRY_RUN_SAMPLE).collect()]
    tokenizer = AutoTokenizer.from_pretrained(options.model, revision=options.revision)
    texts = [t.decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else t for t in sample]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts if t]
    mean = sum(lengths) / len(lengths) if lengths else 0.0
    print(f"dry run: {options.input} -> {options.output} [{options.mode}]")
    print(f"documents: {plan.total} in the input, {plan.committed_before} already scored by this scorer (skipped), "
          f"{plan.to_score} to score")
    print(f"tokens: about {round(mean * plan.to_score)} ({mean:.0f} per document over a sample of {len(texts)}, "
          f"tokenized here)")
    print(f"partitions: {options.partitions or 'per slice, from the documents and cores/GPUs'}")
    print(f"slices: {f'about {options.slice_documents} documents' if options.slice_documents else f'about {options.slice_minutes:g} minutes of work'}"
          f" each; state in {plan.state_dir}")
    print(f"scorer {plan.fingerprint} {dumps(plan.readable)}")
    print("nothing written")


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


def scoring_settings(options: ScoreOptions, plan: ScorePlan):
    from udfs.influence import ScoringSettings

    return ScoringSettings(model=options.model, heads=plan.heads, max_seq_len=plan.max_seq_len,
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
    The Arrow batch size is this job's setting only while the slice's scoring stage runs.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = documents.sparkSession
    partitions = options.partitions or default_partitions(spark, count)
    progress = Progress(spark, count, label=f"slice {number}")
    scored = scored_rows(documents, scoring_settings(options, plan), plan, partitions, progress.counters)
    settings = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(options.arrow_batch_size), **progress.settings}
    with session_settings(spark, settings):
        with progress:  # prints documents, tokens, tokens/s and ETA every few seconds while the stage runs
            scored = scored.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)
    stats = scored.groupBy("status").agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens")).collect()
    return scored, [(r["status"], r["documents"], r["tokens"]) for r in stats]


def release(scored) -> None:
    """Free a slice's materialized rows now rather than at the JVM's next garbage collection."""
    try:
        scored._jdf.queryExecution().analyzed().rdd().unpersist(False)
    except Exception:  # noqa: BLE001 - not a classic session, or already gone: Spark's cleaner frees them
        pass


# ---------------------------------------------------------------- write

def table_properties_of(options: ScoreOptions, plan: ScorePlan) -> dict[str, str]:
    """Provenance for readers of the table: the scorer, and the id and domain columns select.py uses."""
    return {table_contract.SCORER: plan.fingerprint, table_contract.SCORER_CONFIG: dumps(plan.readable),
            table_contract.ID_COL: options.id_col, table_contract.DOMAIN_COL: options.domain_col,
            table_contract.INPUT: _absolute(options.input)}


def ensure_target(spark, options: ScoreOptions, plan: ScorePlan) -> None:
    """The target table exists (empty, with the output's schema and properties) before the first slice,
    so every slice is a MERGE; a concurrent writer that created it first is fine."""
    if table_exists(spark, plan.target):
        return
    empty = scored_rows(plan.documents.limit(0), scoring_settings(options, plan), plan, 1)
    try:
        create_table(empty, plan.target, table_properties_of(options, plan))
    except Exception as exc:  # noqa: BLE001 - another writer created it: merge into theirs
        if not (is_commit_conflict(exc) and table_exists(spark, plan.target)):
            raise


MERGE_SCORES_SQL = Path(__file__).parent / "sql" / "merge_scores.sql"
INSERT_NEW_SCORES_SQL = Path(__file__).parent / "sql" / "insert_new_scores.sql"


def write_scores(spark, scored, options: ScoreOptions, target: str, insert_only: bool = False) -> None:
    """One slice in one commit: SQL MERGE (new ids inserted, stale scorers and retried errors replaced;
    `insert_only` when the target holds nothing to replace: the same MERGE without its update clause).

    SQL rather than the DeltaTable API, so the same statement runs on a Spark Connect session. The
    table and the id column are checked and backquoted identifiers (SQL takes no parameter for
    them); `retry_errors` is a named parameter. The slice is written as a few files, one per slot.
    """
    import uuid

    session = scored.sparkSession
    view = "attention_influence_slice_" + uuid.uuid4().hex[:12]
    scored.coalesce(task_slots(session)).createOrReplaceTempView(view)
    sql = INSERT_NEW_SCORES_SQL if insert_only else MERGE_SCORES_SQL
    text = sql.read_text().format(target=v2_name(target), source=view, id_col=quote_identifier(options.id_col))
    try:
        common.run_sql(session, text, None if insert_only else {"retry_errors": bool(options.retry_errors)})
    finally:
        session.catalog.dropTempView(view)


def write_scores_with_retries(spark, scored, options: ScoreOptions, target: str, insert_only: bool = False) -> None:
    """`write_scores`, again when a concurrent writer's commit conflicts with ours.

    The slice's scores are computed (cached); each attempt re-reads the table: the MERGE leaves
    rows the other writer already scored with this scorer, inserts the rest. So every id ends up
    once and no row is lost; after `--commit-attempts` lost races the job gives up (exit 3),
    with the slices before this one committed.
    """
    import random

    attempts = options.commit_attempts or 5
    for attempt in range(1, attempts + 1):
        try:
            write_scores(spark, scored, options, target, insert_only)
            return
        except Exception as exc:  # noqa: BLE001 - only conflicts are retried
            if not is_commit_conflict(exc):
                raise
            reason = first_line(exc)[:200]
            if attempt == attempts:
                raise CommitConflict(f"{options.output}: concurrent writers conflicted {attempts} times "
                                     f"(last: {reason}); this slice was not committed, rerun to complete"
                                     ) from None
            print(f"commit conflict on {options.output} (attempt {attempt}/{attempts}: {reason}); "
                  f"re-reading the table and retrying", file=sys.stderr, flush=True)
            time.sleep(random.uniform(0.5, 2.0) * attempt)


def slice_committer(spark, options: ScoreOptions, plan: ScorePlan):
    """The slicer's commit (spark_jobs/slice_commits.py: a fresh slice appended while that is safe, else a
    MERGE with retries), then the scorer's properties once if they changed. `commit.commits.appending`
    tells the slicer whether a fresh slice needs no anti-join."""
    properties = table_properties_of(options, plan)
    recorded = {"scorer": table_properties(spark, plan.target).get(table_contract.SCORER)}

    def merge_slice(scored) -> None:
        write_scores_with_retries(spark, scored, options, plan.target, insert_only=not plan.replaces_rows)

    commits = SliceCommits(spark, plan.target, plan.fingerprint, plan.target_version, merge_slice,
                           appends=not plan.replaces_rows, files_per_commit=task_slots(spark))

    def commit(scored, fresh: bool = False) -> None:
        commits.commit(scored, fresh)
        if recorded["scorer"] != plan.fingerprint:
            set_table_properties(spark, plan.target, properties)
            recorded["scorer"] = plan.fingerprint

    commit.commits = commits
    return commit


def compact(spark, target: str) -> None:
    """OPTIMIZE the target: slices write a few small files each; a reader wants few big ones."""
    before = table_detail(spark, target)["numFiles"]
    try:
        spark.sql(f"OPTIMIZE {v2_name(target)}").collect()
    except Exception as exc:  # noqa: BLE001 - compaction is an optimisation; a concurrent writer may win
        print(f"warning: OPTIMIZE {target} did not run ({first_line(exc)[:200]}); the scores are committed",
              file=sys.stderr, flush=True)
        return
    print(f"compacted {target}: {before} files -> {table_detail(spark, target)['numFiles']}", file=sys.stderr,
          flush=True)


def remove_state(spark, path: str) -> None:
    """Delete a staging table or checkpoint the run no longer needs: Hadoop's file system (any scheme) on
    a classic session; on Spark Connect, which has no file API, a local path from here, else left behind."""
    try:
        if common.is_connect(spark):
            local = path.removeprefix("file:") if "://" not in path or path.startswith("file:") else None
            if local is None or not os.path.exists(local):
                raise JobError("Spark Connect has no file API for it; delete it with your storage's tools")
            import shutil

            shutil.rmtree(local)
            return
        jvm = spark.sparkContext._jvm
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
        hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)
    except Exception as exc:  # noqa: BLE001 - left behind is harmless: a later run starts afresh
        print(f"warning: could not remove {path} ({first_line(exc)[:200]})", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- report

def announce(options: ScoreOptions, plan: ScorePlan) -> None:
    where = "its staging table (a killed overwrite run, resumed)" if plan.target != options.output else options.output
    resumed = (f"{plan.committed_before} of {plan.total} documents already committed for this scorer in {where}; "
               if plan.committed_before else "")
    print(f"scoring {options.input} with {options.model} ({len(plan.heads)} heads masked {options.masking}, "
          f"max_seq_len {plan.max_seq_len}, {plan.dtype}) -> {options.output} [{options.mode}"
          f"{', watch' if options.watch else ''}]: {resumed}{plan.to_score} documents to score, in slices of "
          + (f"about {options.slice_documents} documents" if options.slice_documents
             else f"about {options.slice_minutes:g} minutes of work"), file=sys.stderr, flush=True)


def report(summary: ScoreSummary) -> None:
    """The run's last two lines on stdout (make demo keeps them for its summary's tokens/s)."""
    elapsed = summary.elapsed
    print(f"scored {summary.documents} documents ({summary.tokens} tokens) in {elapsed:.1f}s: "
          f"{summary.tokens / elapsed if elapsed else 0:.0f} tokens/s; status {dumps(summary.by_status)}; "
          f"{summary.slices} slice(s), {summary.committed_before} committed before this run")
    print(f"scorer {summary.fingerprint}; wrote {summary.output}")


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
    ensure_target(spark, options, planned)
    detail = table_detail(spark, options.input)
    committer = slice_committer(spark, options, planned)
    slicer = Slicer(SliceWork(
        spark=spark, source=options.input, target=planned.target, id_col=options.id_col,
        not_committed=lambda documents: not_committed(documents, planned.target, planned.fingerprint, options),
        score=lambda documents, count, number: compute_scores(options, planned, documents, count, number),
        release=release,
        commit=committer, appending=lambda: bool(getattr(committer, "commits", None) and committer.commits.appending),
        fresh_files=planned.fresh_files, checkpoint=planned.checkpoint,
        slice_documents=options.slice_documents, slice_seconds=60.0 * options.slice_minutes,
        slots=task_slots(spark), docs_per_file=planned.total / max(1, detail["numFiles"] or 1),
        total=planned.total, committed_before=planned.committed_before, to_score=planned.to_score,
        stop=stop or StopSignal()))
    read_input = lambda: read_table(spark, options.input)  # noqa: E731
    if options.watch:
        watch(slicer, read_input, options.watch_interval, compact=lambda: compact(spark, options.output))
        # returns only by Stopped (or an error)
    elif planned.to_score:
        if not slicer.run_stream() and common.is_connect(spark):
            slice_input_files(spark, slicer, options, planned, detail)
        slicer.commit_remaining(read_input)  # the one full comparison after the stream: nothing missed
    if planned.target != options.output:  # overwrite: one atomic replace from the complete staging table
        replace_table(read_table(spark, planned.target), options.output, table_properties_of(options, planned))
        remove_state(spark, planned.target)
        remove_state(spark, planned.checkpoint)
    elif slicer.slices > COMPACT_AFTER_SLICES:
        compact(spark, options.output)
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
        print(f"Spark Connect: {options.input} is partitioned or uses column mapping or deletion vectors: slices "
              f"are cut from the whole input by a hash of the id (each rescans the input)", file=sys.stderr, flush=True)
        return
    schema = plan.documents.schema
    paths = sorted(path for path in plan.documents.inputFiles() if path.rsplit("/", 1)[-1] in plan.fresh_files)
    print(f"Spark Connect: {len(paths)} input files hold documents with nothing committed; slices read a few "
          f"files each", file=sys.stderr, flush=True)
    slicer.run_files(lambda group: spark.read.schema(schema).parquet(*group), paths)


def task_slots(spark) -> int:
    """Task slots of the cluster: cores, or GPUs where a task takes a whole GPU (see default_partitions)."""
    task_cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    return max(1, common.default_parallelism(spark) // max(1, task_cpus))


def main(argv=None):
    """Flags -> options; the model and heads are checked before Spark starts; SIGTERM and Ctrl-C stop
    at the next slice boundary (exit 75), a second one at once."""
    options = parse_options(argv)
    model = check_model_and_heads(options)
    stop = StopSignal()
    with stop.installed():
        run(get_spark("attention-influence-score"), options, model, stop)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
