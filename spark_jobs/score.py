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

from spark_jobs.common import (JobError, check_table_name, create_table, delta_table, dumps, first_line, get_spark,
                               new_parser, parse_flags, positive_int, quote_identifier, read_table, replace_table, run,
                               set_table_properties, table_exists, table_properties)
from spark_jobs.progress import Progress

PROPERTY_PREFIX = "attention_influence."


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
    p.add_argument("--batch-tokens", type=positive_int, help="padded tokens per forward pass")
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
                   help="attempts of the final Delta commit when concurrent writers conflict")
    return p


TASKS_PER_SLOT = 4  # several tasks per core (or per GPU): progress per finished task, no long straggler
DRY_RUN_SAMPLE = 64  # documents tokenized on the driver to estimate a dry run's tokens


def default_partitions(spark, documents: int) -> int:
    """Scoring tasks for `documents`: TASKS_PER_SLOT per task slot, never more than the documents.

    A slot is a core, or a GPU where a task takes a whole GPU (conf/spark/gpu.conf sets
    spark.task.cpus to the executor's cores, so there is one slot per executor and GPU).
    """
    task_cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    slots = max(1, spark.sparkContext.defaultParallelism // max(1, task_cpus))
    return max(1, min(documents, TASKS_PER_SLOT * slots))


def dry_run(documents, todo, to_score: int, partitions: int, args, fingerprint: str, readable: dict) -> int:
    """What a run would do, from counts and a driver-side tokenization of a sample; writes nothing."""
    from transformers import AutoTokenizer

    total = documents.count()
    sample = []
    if to_score:
        fraction = min(1.0, 2.0 * DRY_RUN_SAMPLE / to_score)
        sample = [r[0] for r in todo.sample(fraction=fraction, seed=0).select(args.text_col)
                  .limit(DRY_RUN_SAMPLE).collect()]
    tokenizer = AutoTokenizer.from_pretrained(args.model, revision=args.revision)
    texts = [t.decode("utf-8", "replace") if isinstance(t, (bytes, bytearray)) else t for t in sample]
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts if t]
    mean = sum(lengths) / len(lengths) if lengths else 0.0
    print(f"dry run: {args.input} -> {args.output} [{args.mode}]")
    print(f"documents: {total} in the input, {total - to_score} already scored by this scorer (skipped), "
          f"{to_score} to score")
    print(f"tokens: about {round(mean * to_score)} ({mean:.0f} per document over a sample of {len(texts)}, "
          f"tokenized here)")
    print(f"partitions: {partitions}" + ("" if args.partitions else " (default: from the documents and cores/GPUs)"))
    print(f"scorer {fingerprint} {dumps(readable)}")
    print("nothing written")
    return 0


def scorer_identity(args, heads, revision: str, dtype: str, max_seq_len: int) -> tuple[str, dict]:
    """(fingerprint, readable form) of everything that changes a score.

    A local checkpoint is identified by its content digest (`revision`), not its
    path, so `./model` and `/abs/model` do not force a rescore; a hub model by id
    and commit.
    """
    readable = {"model": args.model, "model_revision": revision, "heads": [list(h) for h in heads],
                "max_seq_len": max_seq_len, "masking": args.masking, "dtype": dtype}
    identity = dict(readable, model=None if revision.startswith("local-") else args.model)
    return "ai1-" + hashlib.sha256(dumps(identity).encode()).hexdigest()[:16], readable


def check_input(df, args) -> list[str]:
    """Columns to carry; refuse missing columns, null and duplicate ids before any scoring."""
    from pyspark.sql import functions as F

    missing = [c for c in (args.id_col, args.text_col) if c not in df.columns]
    if missing:
        raise JobError(f"input {args.input} has no column(s) {', '.join(missing)} (columns: {', '.join(df.columns)})")
    text_type = df.schema[args.text_col].dataType.simpleString()
    if text_type not in ("string", "binary"):
        raise JobError(f"text column {args.text_col} is {text_type}, expected STRING")
    if args.carry_cols in (None, "*"):
        carry = list(df.columns)
    else:
        carry = [c.strip() for c in args.carry_cols.split(",") if c.strip()]
        carry += [c for c in (args.id_col, args.domain_col) if c in df.columns and c not in carry]
        unknown = [c for c in carry if c not in df.columns]
        if unknown:
            raise JobError(f"--carry-cols names missing column(s): {', '.join(unknown)}")
    backticked = [c for c in carry if "`" in c]
    if backticked:  # PySpark's mapInPandas parses column names: a backtick cannot be addressed
        raise JobError(f"column name(s) with a backtick cannot be scored: {', '.join(backticked)}; "
                       f"rename them or leave them out with --carry-cols")
    clash = [c for c in carry if c in {"n_tokens", "loss_full", "loss_masked", "attention_influence", "status",
                                       "error", "scorer", "scored_at", "token_loss_full", "token_loss_masked"}]
    if clash:
        raise JobError(f"input column(s) {', '.join(clash)} clash with score columns; drop or rename them")
    id_col = F.col(quote_identifier(args.id_col))  # names from flags are always quoted
    problems = (df.groupBy(id_col).count().where(F.col("count") > 1).limit(3).collect())
    if problems:
        examples = ", ".join(repr(r[0]) for r in problems)
        raise JobError(f"input has duplicate ids in column {args.id_col} (e.g. {examples}); ids must be unique")
    if df.where(id_col.isNull()).limit(1).count():
        raise JobError(f"input has null ids in column {args.id_col}")
    return carry


def check_model_and_heads(args):
    """(heads, max_seq_len): model config and heads checked before Spark starts or a task runs."""
    from attention_influence.loading import check_untrusted_model, context_length, load_config
    from attention_influence.retrieval import load_heads

    heads = load_heads(args.heads)
    check_untrusted_model(args.model, bool(args.trust_remote_code), bool(args.allow_pickle_weights))
    config = load_config(args.model, args.revision, bool(args.trust_remote_code))
    n_layers, n_heads = config.num_hidden_layers, config.num_attention_heads
    bad = [h for h in heads if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise JobError(f"heads out of range for {args.model} ({n_layers} layers x {n_heads} heads): {bad[:5]}")
    return heads, args.max_seq_len or context_length(config)


def write_scores(spark, scored, args, output_exists: bool, properties: dict) -> None:
    """Overwrite: one atomic replace. Incremental: one MERGE (new ids inserted, stale scorers replaced)."""
    from pyspark.sql import functions as F

    if args.mode == "overwrite":
        replace_table(scored, args.output, properties)
        return
    if not output_exists:  # create, never replace: a concurrent writer's table is merged into on retry
        create_table(scored, args.output, properties)
        return
    same_id = F.col("t." + quote_identifier(args.id_col)) == F.col("s." + quote_identifier(args.id_col))
    stale = "t.scorer <> s.scorer" + (" OR t.status = 'error'" if args.retry_errors else "")
    (delta_table(spark, args.output).alias("t").merge(scored.alias("s"), same_id)
     .whenMatchedUpdateAll(condition=stale)
     .whenNotMatchedInsertAll()
     .execute())
    if table_properties(spark, args.output).get(PROPERTY_PREFIX + "scorer") != properties[PROPERTY_PREFIX + "scorer"]:
        set_table_properties(spark, args.output, properties)


COMMIT_CONFLICT_EXIT = 3
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
              "ProtocolChangedException", "DELTA_CONCURRENT_", "TABLE_OR_VIEW_ALREADY_EXISTS",
              "FileAlreadyExistsException")


class CommitConflict(Exception):
    """Concurrent writers kept winning: one line on stderr and exit code 3, so that a rerun completes."""


def is_commit_conflict(exc: BaseException) -> bool:
    """Delta's optimistic concurrency lost a race (or another writer created the table first)."""
    text = type(exc).__name__ + " " + str(exc)[:2000]
    return any(name in text for name in _CONFLICTS)


def write_scores_with_retries(spark, scored, args, output_exists: bool, properties: dict) -> None:
    """`write_scores`, again when a concurrent writer's commit conflicts with ours.

    The scores are computed (cached); each attempt re-reads the table: the MERGE leaves rows
    the other writer already scored with this scorer, inserts the rest. So every id ends up
    once and no row is lost; after `--commit-attempts` lost races the job gives up (exit 3).
    """
    import random

    attempts = args.commit_attempts or 5
    for attempt in range(1, attempts + 1):
        try:
            write_scores(spark, scored, args, output_exists, properties)
            return
        except Exception as exc:  # noqa: BLE001 - only conflicts are retried
            if not is_commit_conflict(exc):
                raise
            reason = first_line(exc)[:200]
            if attempt == attempts:
                raise CommitConflict(f"{args.output}: concurrent writers conflicted {attempts} times "
                                     f"(last: {reason}); nothing of this run was committed, rerun to complete"
                                     ) from None
            print(f"commit conflict on {args.output} (attempt {attempt}/{attempts}: {reason}); "
                  f"re-reading the table and retrying", file=sys.stderr, flush=True)
            time.sleep(random.uniform(0.5, 2.0) * attempt)
            output_exists = args.mode == "incremental" and table_exists(spark, args.output)


def stage_failure_reason(exc: BaseException) -> str | None:
    """One line for a job Spark aborted after a task failed `spark.task.maxFailures` times."""
    import re

    match = re.search(r"Task (\d+) in stage ([\d.]+) failed (\d+) times?, most recent failure: (.*)", str(exc))
    if not match:
        return None
    cause = re.sub(r"^Lost task \S+ in stage \S+ \([^)]*\) \([^)]*\): ", "", match.group(4).strip())
    return (f"scoring task for partition {match.group(1)} (stage {match.group(2)}) failed {match.group(3)} times; "
            f"the job was aborted and nothing was committed: {cause[:300]}")


def main(argv=None):
    """The job; a commit lost to concurrent writers exits 3, a task that failed every retry exits 1,
    each with one line on stderr."""
    try:
        return _main(argv)
    except CommitConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return COMMIT_CONFLICT_EXIT
    except Exception as exc:  # noqa: BLE001 - anything else goes on to run()
        reason = stage_failure_reason(exc)
        if reason is None:
            raise
        print(f"error: {reason}", file=sys.stderr)
        return 1


def _main(argv=None):
    args = parse_flags("score", build_parser(), argv)
    for flag in ("input", "output", "model", "heads"):
        if not getattr(args, flag):
            raise JobError(f"--{flag} is required")
    check_table_name(args.input), check_table_name(args.output)  # before Spark starts
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from attention_influence.loading import model_revision, resolve_dtype
    from attention_influence.masking import MASKING_MODES
    from udfs.influence import ScoringSettings, score_documents

    if args.masking not in MASKING_MODES:  # a config file's value; the flag itself has choices
        raise JobError(f"masking must be one of {', '.join(MASKING_MODES)}, got {args.masking!r}")
    heads, max_seq_len = check_model_and_heads(args)
    spark = get_spark("attention-influence-score")
    gpu_cluster = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    dtype = resolve_dtype(args.dtype, "cuda" if gpu_cluster else "cpu")
    fingerprint, readable = scorer_identity(args, heads, model_revision(args.model, args.revision), dtype,
                                            max_seq_len)
    documents = read_table(spark, args.input)
    carry = check_input(documents, args)
    output_exists = table_exists(spark, args.output)
    todo = documents
    if args.mode == "incremental" and output_exists:
        done = read_table(spark, args.output).where(F.col("scorer") == fingerprint)
        if args.retry_errors:
            done = done.where(F.col("status") != "error")
        id_col = quote_identifier(args.id_col)
        done = done.select(F.col(id_col).alias("done_id"))
        todo = documents.join(done, F.col(id_col) == F.col("done_id"), how="left_anti")
    to_score = todo.count()
    partitions = args.partitions or default_partitions(spark, to_score)
    if args.dry_run:
        return dry_run(documents, todo, to_score, partitions, args, fingerprint, readable)
    todo = todo.repartition(partitions)
    progress = Progress(spark, to_score)

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.arrow_batch_size))
    settings = ScoringSettings(model=args.model, heads=tuple(heads), max_seq_len=max_seq_len, dtype=dtype,
                               text_col=args.text_col, carry_cols=tuple(carry), batch_tokens=args.batch_tokens,
                               token_losses=bool(args.token_losses), fused=bool(args.fused),
                               max_chars=args.max_chars, revision=args.revision, masking=args.masking,
                               trust_remote_code=bool(args.trust_remote_code),
                               allow_pickle_weights=bool(args.allow_pickle_weights))
    scored = (score_documents(todo, settings, progress.counters)
              .withColumn("scorer", F.lit(fingerprint))
              .withColumn("scored_at", F.current_timestamp()))
    print(f"scoring {args.input} with {args.model} ({len(heads)} heads masked {args.masking}, "
          f"max_seq_len {max_seq_len}, {dtype}) -> {args.output} [{args.mode}]: {to_score} documents in "
          f"{partitions} tasks", file=sys.stderr, flush=True)

    started = time.time()
    scored = scored.persist(StorageLevel.MEMORY_AND_DISK)  # score once; the write reads the cached rows
    with progress:  # prints documents, tokens, tokens/s and ETA every few seconds while the stage runs
        stats = (scored.groupBy("status").agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens"))
                 .collect())
    elapsed = time.time() - started
    by_status = {r["status"]: r["documents"] for r in stats}
    if by_status or args.mode == "overwrite" or not output_exists:  # a rerun with nothing new writes nothing
        properties = {PROPERTY_PREFIX + "scorer": fingerprint, PROPERTY_PREFIX + "scorer_config": dumps(readable),
                      PROPERTY_PREFIX + "id_col": args.id_col, PROPERTY_PREFIX + "domain_col": args.domain_col}
        write_scores_with_retries(spark, scored, args, output_exists, properties)
    scored.unpersist()

    tokens = sum(r["tokens"] or 0 for r in stats if r["status"] == "ok")
    print(f"scored {sum(by_status.values())} documents ({tokens} tokens) in {elapsed:.1f}s: "
          f"{tokens / elapsed if elapsed else 0:.0f} tokens/s; status {dumps(by_status)}")
    print(f"scorer {fingerprint}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
