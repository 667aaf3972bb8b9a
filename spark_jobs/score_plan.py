"""What a scoring run will do, decided before any model runs: the scorer, the input checked, the plan.

The model's configuration and the heads are checked before Spark starts (`check_model_and_heads`); the
plan reads the input and the scored table's ids once, at a pinned version of the table, and says how many
documents are left, which input files are fresh (nothing of them committed), and where the run keeps its
state (`ScorePlan`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from spark_jobs import run_log
from spark_jobs.cli import JobError, dumps
from spark_jobs.scores_table import ScoresTable
from spark_jobs.session import task_slots
from spark_jobs.tables import (ADDED_COLUMNS, DOMAIN_COL, ID_COL, INPUT, SCORER, SCORER_CONFIG, check_table_name,
                               data_file_name, is_path, quote_identifier, read_table)

# Default padded tokens per forward pass (docs/benchmarks.md): on an H100 16,384 peaked at 42 GiB with the
# paper's 1.3B shape, within 1.3% of the fastest that fits; on CPUs small batches stay in cache and
# SmolLM2-135M scored fastest at 1,024 (1.2x 4,096).
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 1024
DRY_RUN_SAMPLE = 64  # documents tokenized on the driver to estimate a dry run's tokens


@dataclass(frozen=True)
class ModelCheck:
    """What is known about the model before Spark starts: the heads to mask and the window length."""

    heads: tuple[tuple[int, int], ...]
    max_seq_len: int


def check_model_and_heads(options) -> ModelCheck:
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


def scorer_identity(options, heads, revision: str, dtype: str, max_seq_len: int) -> tuple[str, dict]:
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

    return {name for name, _ in SCORE_COLUMNS + TOKEN_LOSS_COLUMNS} | set(ADDED_COLUMNS)


def check_input(df, options) -> list[str]:
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
    table: ScoresTable     # where the slices are committed (`target`)
    state_dir: str
    run_key: str           # names this run's checkpoint and staging: same input, output, scorer, mode
    output: str
    replaces_rows: bool    # the target holds rows a slice may replace (another scorer's; errors to retry)
    properties: dict       # the scorer's table properties (provenance for select.py and readers)
    target_version: int = -1  # the target's Delta version the plan read (-1: no target yet)
    fresh_files: frozenset = frozenset()  # input files (by name) holding no document committed at that version

    @property
    def checkpoint(self) -> str:
        """The stream's checkpoint: one per input, output, scorer and mode."""
        return f"{self.state_dir}/{'overwrite' if self.target != self.output else 'incremental'}-{self.run_key}-stream"


def state_dir_of(spark, options) -> str:
    """`--state-dir`, else `_attention_influence_state/<name>` beside a path output (never inside it: a
    Delta table's folder is Delta's), else under the warehouse for a catalog output."""
    if options.state_dir:
        return options.state_dir.rstrip("/")
    if is_path(options.output):
        output = os.path.abspath(options.output) if "://" not in options.output else options.output.rstrip("/")
        parent, name = output.rsplit("/", 1)
        return f"{parent}/_attention_influence_state/{name}"
    warehouse = spark.conf.get("spark.sql.warehouse.dir", "spark-warehouse").rstrip("/")
    return f"{warehouse}/_attention_influence_state/{options.output}"


def plan(spark, options, model: ModelCheck) -> ScorePlan:
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
    run_key = hashlib.sha256(dumps({"input": absolute_ref(options.input), "output": absolute_ref(options.output),
                                    "scorer": fingerprint, "mode": options.mode}).encode()).hexdigest()[:16]
    target = options.output if options.mode == "incremental" else f"{state_dir}/overwrite-{run_key}-staging"
    properties = {SCORER: fingerprint, SCORER_CONFIG: dumps(readable), ID_COL: options.id_col,
                  DOMAIN_COL: options.domain_col, INPUT: absolute_ref(options.input)}
    table = ScoresTable(spark, target, fingerprint, options.id_col, name=options.output,
                        retry_errors=bool(options.retry_errors), commit_attempts=options.commit_attempts,
                        files_per_commit=task_slots(spark), properties=properties)
    started = time.time()
    target_version = table.version()
    files = input_files(documents)
    total, committed_by_file = table.committed_per_file(documents, target_version)
    committed_before = sum(committed_by_file.values())
    replaces_rows = table.holds_replaceable_rows()
    run_log.say(f"plan: {total} documents in {len(files)} input files, {committed_before} already committed for "
                f"this scorer (in {len(committed_by_file)} of the files); the ids of input and output read once, "
                f"{time.time() - started:.1f}s")
    return ScorePlan(documents=documents, total=total, committed_before=committed_before,
                     to_score=total - committed_before, target=target, carry=carry, heads=model.heads,
                     max_seq_len=model.max_seq_len, dtype=dtype, batch_tokens=batch_tokens, fingerprint=fingerprint,
                     readable=readable, table=table, properties=properties, state_dir=state_dir,
                     run_key=run_key, output=options.output,
                     replaces_rows=replaces_rows, target_version=target_version,
                     fresh_files=frozenset(files - set(committed_by_file)))


def input_files(documents) -> set[str]:
    """The data files of a Delta read, by file name (Delta names each file uniquely)."""
    return {data_file_name(path) for path in documents.inputFiles()}


def absolute_ref(ref: str) -> str:
    """A local path made absolute (what the table properties and the run's key record); names as they are."""
    return os.path.abspath(ref) if is_path(ref) and "://" not in ref else ref


def dry_run(options, plan: ScorePlan) -> None:
    """What a run would do, from counts and a driver-side tokenization of a sample; writes nothing."""
    from transformers import AutoTokenizer

    todo = plan.table.not_committed(plan.documents)
    sample = []
    if plan.to_score:
        fraction = min(1.0, 2.0 * DRY_RUN_SAMPLE / plan.to_score)
        sample = [r[0] for r in todo.sample(fraction=fraction, seed=0).select(options.text_col)
                  .limit(DRY_RUN_SAMPLE).collect()]
    tokenizer = AutoTokenizer.from_pretrained(options.model, revision=options.revision)
    texts = [t.decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else t for t in sample]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts if t]
    mean = sum(lengths) / len(lengths) if lengths else 0.0
    run_log.result(f"dry run: {options.input} -> {options.output} [{options.mode}]")
    run_log.result(f"documents: {plan.total} in the input, {plan.committed_before} already scored by this scorer (skipped), "
                   f"{plan.to_score} to score")
    run_log.result(f"tokens: about {round(mean * plan.to_score)} ({mean:.0f} per document over a sample of {len(texts)}, "
                   f"tokenized here)")
    run_log.result(f"partitions: {options.partitions or 'per slice, from the documents and cores/GPUs'}")
    run_log.result(f"slices: {f'about {options.slice_documents} documents' if options.slice_documents else f'about {options.slice_minutes:g} minutes of work'}"
                   f" each; state in {plan.state_dir}")
    run_log.result(f"scorer {plan.fingerprint} {dumps(plan.readable)}")
    run_log.result("nothing written")
