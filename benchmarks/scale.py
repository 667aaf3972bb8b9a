"""The paper's scale, simulated on this machine (`make bench-scale`; docs/benchmarks.md records a run).

Two measurements on synthetic tables, each on an idle machine, as counts and ratios within one run:

* Selection and analysis: a scored table of N rows (default 2M and 10M) in three domains of 80%, 15%
  and 5% with a 200-character text. For `select.py`'s query (by domain, --global, --token-budget) and
  the analysis (selection_bias, extremes): every stage that reads at least a tenth of the rows from a
  shuffle, its tasks and its largest task's share of the records (read from Spark's task metrics), and
  the wall time. The window query select.py ran before is measured beside it on the smallest size.
* Slices: score.py on `--documents` short documents in slices of `--slice-documents`, into outputs that
  already hold 0, 2M, 10M rows of the same scorer. The model is replaced by a null scorer (constant
  losses, same columns), so a slice's time is Spark's and Delta's own work: finding what is not yet
  committed, the commit, the bookkeeping. Per slice: the time of each micro-batch's work / its slices.

Ends with `key=value` lines and a table extrapolated to the paper's corpus (237M documents) under the
assumptions it prints. Disk: about 0.3 GB per million scored rows (bench-output/scale/, reused by
later runs); time on 2 cores: about 25 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.stage_skew import measured  # noqa: E402

PAPER_DOCUMENTS = 237_000_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="2000000,10000000", help="sizes of the scored tables for selection")
    p.add_argument("--committed", default="0,2000000,10000000", help="rows already in the output, per slicing run")
    p.add_argument("--documents", type=int, default=320, help="documents scored in each slicing run")
    p.add_argument("--slice-documents", type=int, default=40)
    p.add_argument("--tasks", type=int, default=8, help="shuffle partitions (AQE coalescing off): tasks per stage")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the window query on the smallest table")
    p.add_argument("--parts", default="selection,slices,connect",
                   help="which measurements to run: selection, slices (classic), connect (slices on Spark Connect)")
    p.add_argument("--out", default=str(REPO / "bench-output" / "scale"))
    return p.parse_args(argv)


def numbers(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------- synthetic tables

def scored_frame(spark, rows: int, scorer: str = "ai1-synthetic", prefix: str = "doc", files: int = 16):
    """`rows` rows with score.py's columns, 80/15/5% in web/code/math, a 200-character text."""
    from pyspark.sql import functions as F

    rid = F.col("id")
    return (spark.range(rows, numPartitions=files)
            .select(F.format_string(f"{prefix}-%010d", rid).alias("id"),
                    F.when(rid % 20 < 16, "web").when(rid % 20 < 19, "code").otherwise("math").alias("domain"),
                    F.concat(F.format_string("document %d ", rid), F.repeat(F.lit("lorem ipsum "), 16))
                    .substr(1, 200).alias("text"),
                    (F.abs(F.xxhash64(rid)) % 2000 + 20).cast("int").alias("n_tokens"),
                    (F.abs(F.xxhash64(rid, F.lit(1))) % 1000 / 250 + 0.5).alias("loss_full"),
                    (F.abs(F.xxhash64(rid, F.lit(2))) % 1000 / 200 + 0.5).alias("loss_masked"),
                    F.lit("ok").alias("status"), F.lit(None).cast("string").alias("error"),
                    F.lit(scorer).alias("scorer"), F.current_timestamp().alias("scored_at"))
            .withColumn("attention_influence", (F.col("loss_masked") - F.col("loss_full")) / F.col("loss_full")))


def ensure_table(spark, path: Path, build) -> str:
    if not (path / "_delta_log").exists():
        started = time.time()
        build().write.format("delta").save(str(path))
        print(f"built {path} in {time.time() - started:.0f}s", flush=True)
    return str(path)


# ---------------------------------------------------------------- selection and analysis

def measure(spark, label: str, query, tasks: int, rows: int) -> dict:
    from spark_jobs.session import session_settings

    settings = {"spark.sql.shuffle.partitions": str(tasks), "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    started = time.time()
    with session_settings(spark, settings), measured(spark) as measurement:
        query()
    seconds = time.time() - started
    stages = measurement.shuffled(at_least=rows // 10)
    worst = max(stages, key=lambda s: s.even_multiple())
    print(f"{label}: {seconds:.1f}s, {len(stages)} stages read >= 10% of the rows from a shuffle; worst: "
          f"{worst.tasks} tasks, largest task {worst.largest_share:.1%} ({worst.even_multiple():.2f}x an even share)")
    for stage in stages:
        print("    " + stage.line())
    return {"seconds": seconds, "largest_share": worst.largest_share, "tasks": worst.tasks,
            "even_multiple": worst.even_multiple()}


def selection(spark, args, out: Path) -> dict:
    from spark_jobs import analysis, select
    from spark_jobs.session import run_sql

    results = {}
    sizes = numbers(args.rows)
    for rows in sizes:
        table = ensure_table(spark, out / f"scored-{rows}", lambda: scored_frame(spark, rows))
        scored = spark.read.format("delta").load(table)
        cases = {"by_domain": dict(fraction=0.2), "global": dict(fraction=0.2, by_domain=False),
                 "token_budget": dict(token_budget=int(0.2 * rows * 1000))}
        for name, case in cases.items():
            options = select.with_recorded_columns(spark, select.options(
                input=table, output=str(out / f"selected-{rows}-{name}"), **case))
            results[f"select_{name}_{rows}"] = measure(
                spark, f"select {name} on {rows:,} rows", lambda: select.write_selection(spark, scored, options),
                args.tasks, rows)
        results[f"analysis_bias_{rows}"] = measure(
            spark, f"selection_bias on {rows:,} rows", lambda: analysis.selection_bias(spark, scored, 0.2).collect(),
            args.tasks, rows)
        results[f"analysis_extremes_{rows}"] = measure(
            spark, f"extremes on {rows:,} rows", lambda: analysis.extremes(spark, scored, 2).collect(), args.tasks, rows)
        if rows == min(sizes):
            results.update(carried_text(spark, args, out, table, rows))
        if args.reference and rows == min(sizes):
            reference = (REPO / "tests" / "select_top_window_reference.sql").read_text()
            options = select.with_recorded_columns(spark, select.options(input=table, output=str(out / "x"),
                                                                         fraction=0.2))

            def window_query():
                select.register_candidates(spark, scored, options)
                run_sql(spark, reference, select.selection_parameters(options)).write.format("noop").mode(
                    "overwrite").save()

            results[f"window_reference_{rows}"] = measure(spark, f"the window query (before) on {rows:,} rows",
                                                          window_query, args.tasks, rows)
    return results


def carried_text(spark, args, out: Path, table: str, rows: int) -> dict:
    """What `--carry-cols` costs: the scored table with the text (the default, every input column) against
    one with id and domain only, whose selection joins the text back from the recorded input."""
    from spark_jobs import select
    from spark_jobs.tables import set_table_properties, table_detail
    from spark_jobs.tables import INPUT

    scored = spark.read.format("delta").load(table)
    documents = ensure_table(spark, out / f"documents-{rows}", lambda: scored.select("id", "domain", "text"))
    narrow = ensure_table(spark, out / f"scored-narrow-{rows}", lambda: scored.drop("text"))
    set_table_properties(spark, narrow, {INPUT: os.path.abspath(documents)})
    results = {}
    for name, path in (("with_text", table), ("without_text", narrow)):
        options = select.with_recorded_columns(spark, select.options(
            input=path, output=str(out / f"selected-{rows}-{name}"), fraction=0.2))
        frame = spark.read.format("delta").load(path)
        measured_run = measure(spark, f"select by domain on {rows:,} rows, scored table {name.replace('_', ' ')}",
                               lambda: select.write_selection(spark, frame, options), args.tasks, rows)
        selected = spark.read.format("delta").load(str(out / f"selected-{rows}-{name}"))
        assert "text" in selected.columns  # joined back from the input when not carried
        results[f"carry_{name}_{rows}"] = {"select_seconds": measured_run["seconds"],
                                           "scored_bytes": float(table_detail(spark, path)["sizeInBytes"])}
    print(f"carrying the text: scored table {results[f'carry_with_text_{rows}']['scored_bytes'] / 2**20:.0f} MiB "
          f"with it, {results[f'carry_without_text_{rows}']['scored_bytes'] / 2**20:.0f} MiB without", flush=True)
    return results


# ---------------------------------------------------------------- slices

class NullScorer:
    """score.scored_rows without the model: the same columns, constant losses (Spark's work alone)."""

    def __init__(self, real):
        self.real = real

    def __call__(self, documents, settings, plan, partitions, counters=None):
        from pyspark.sql import functions as F

        from spark_jobs.tables import SCORED_AT_COLUMN, SCORER_COLUMN

        carried = [F.col(f"`{c}`") for c in settings.carry_cols]
        return (documents.repartition(partitions)
                .select(*carried, F.length(settings.text_col).cast("int").alias("n_tokens"),
                        F.lit(2.0).alias("loss_full"), F.lit(2.2).alias("loss_masked"),
                        F.lit(0.1).alias("attention_influence"), F.lit("ok").alias("status"),
                        F.lit(None).cast("string").alias("error"))
                .withColumn(SCORER_COLUMN, F.lit(plan.fingerprint))
                .withColumn(SCORED_AT_COLUMN, F.current_timestamp()))


def slices(spark, args, out: Path, connect: bool = False) -> dict:
    """Classic: the input holds only the new documents, the output `committed` rows more. Spark Connect
    (`connect`): the input holds the `committed` documents too (already in the output), as a resumed run's
    input does, since there each slice used to rescan the whole input."""
    from spark_jobs import score, score_plan, slices as slicing

    model = str(REPO / "fixtures" / "tiny-llama")
    heads = out / "heads.json"
    heads.write_text('{"heads": [[1, 0]], "model": "fixture"}')
    docs = [(f"new-{i:05d}", ("web", "code", "math")[i % 3], f"Document {i}: " + "some words here. " * 5)
            for i in range(args.documents)]
    files = max(1, args.documents // args.slice_documents)
    root = out / f"{'connect-' if connect else ''}slices-{int(time.time())}"
    new_documents = str(root / "new-documents")
    spark.createDataFrame(docs, "id STRING, domain STRING, text STRING").repartition(files).write.format(
        "delta").save(new_documents)

    score.scored_rows = NullScorer(score.scored_rows)
    timings: list[tuple[float, int]] = []
    real_commit_documents = slicing.Slicer.commit_documents

    def timed_commit_documents(self, documents, *args, **kwargs):
        before, started = self.slices, time.time()
        real_commit_documents(self, documents, *args, **kwargs)
        timings.append((time.time() - started, self.slices - before))

    slicing.Slicer.commit_documents = timed_commit_documents
    results = {}
    fingerprint = score_plan.scorer_identity(*fingerprint_of(score, model, str(heads)))[0]
    # One unmeasured run first: the first run of a process pays the JVM's and the stream's warm-up, which
    # would flatter every ratio against the empty output.
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        score.run(spark, score.options(input=new_documents, output=str(root / "warm-up"), model=model,
                                       heads=str(heads), max_seq_len=64, slice_documents=args.slice_documents))
    for committed in numbers(args.committed):
        output = str(root / f"output-{committed}")
        inputs = new_documents
        if committed:
            base = ensure_table(spark, out / f"committed-{committed}-{fingerprint}",
                                lambda: scored_frame(spark, committed, scorer=fingerprint, prefix="old",
                                                     files=max(1, committed // 125_000)))
            shutil.copytree(base, output)  # a Delta table is its folder: a copy is the same table
            if connect:
                inputs = str(root / f"input-{committed}")
                shutil.copytree(new_documents, inputs)
                (spark.read.format("delta").load(base).select("id", "domain", "text").write.format("delta")
                 .mode("append").save(inputs))
        options = score.options(input=inputs, output=output, model=model, heads=str(heads), max_seq_len=64,
                                slice_documents=args.slice_documents)
        timings.clear()
        started = time.time()
        with contextlib.redirect_stderr(io.StringIO()) as log:
            summary = score.run(spark, options)
        seconds = time.time() - started
        assert summary.fingerprint == fingerprint, (summary.fingerprint, fingerprint)
        # One call per micro-batch; the first commits the run's first slice (a MERGE, see scores_table.py),
        # the last is the final full comparison (nothing left to commit).
        streamed = [(s, n) for s, n in timings[:-1] if n]
        if not streamed and timings:  # every slice inside one call (before: Spark Connect's hashed slices)
            streamed = [(timings[0][0] / max(1, timings[0][1]), 1)] + [timings[0]]
        first = streamed[0][0] / streamed[0][1] if streamed else 0.0
        rest = streamed[1:]
        per_slice = sum(s for s, _ in rest) / max(1, sum(n for _, n in rest))
        final = timings[-1][0] if timings else 0.0
        plan_line = next((line for line in log.getvalue().splitlines() if line.startswith("plan")), "")
        plan_seconds = float(plan_line.rsplit(" ", 1)[-1].rstrip("s")) if plan_line else float("nan")
        rows = spark.read.format("delta").load(output)
        ids = rows.select("id").distinct().count()
        once = ids == rows.count() == committed + args.documents
        print(f"slices into an output holding {committed:,} rows: {summary.slices} slices; Spark's own work "
              f"{per_slice:.2f}s a slice after the first, the first {first:.1f}s; plan {plan_seconds:.1f}s, "
              f"final comparison {final:.1f}s, run {seconds:.1f}s; each id once: {once}", flush=True)
        results[f"{'connect_' if connect else ''}slices_{committed}"] = {"per_slice": per_slice, "first_slice": first, "plan": plan_seconds,
                                          "final": final, "seconds": seconds, "exactly_once": once}
    score.scored_rows = score.scored_rows.real
    slicing.Slicer.commit_documents = real_commit_documents
    return results


def fingerprint_of(score, model: str, heads: str):
    """scorer_identity's arguments for the benchmark's options, as score_plan.plan computes them on a CPU."""
    from attention_influence.loading import model_revision, resolve_dtype

    options = score.options(input="x/in", output="x/out", model=model, heads=heads, max_seq_len=64)
    check = score.check_model_and_heads(options)
    return options, check.heads, model_revision(model, None), resolve_dtype(options.dtype, "cpu"), check.max_seq_len


def connect_slices(args, out: Path) -> dict:
    """`slices` on a local Spark Connect server, in a process of its own (SPARK_REMOTE=local[2])."""
    import json
    import subprocess

    env = dict(os.environ, SPARK_REMOTE="local[2]")
    done = subprocess.run([sys.executable, __file__, "--parts", "connect-inner", "--committed", args.committed,
                           "--documents", str(args.documents), "--slice-documents", str(args.slice_documents),
                           "--out", str(out)], env=env, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    for line in lines:
        if not line.startswith("{"):
            print(line, flush=True)
    if done.returncode:
        print(done.stderr[-3000:])
        raise SystemExit("the Spark Connect measurement failed")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the paper's corpus

CLUSTER_CORES = 512  # 64 executors x 8 cores
LOCAL_CORES = 2


def extrapolate(results: dict, args) -> list[str]:
    """The measured figures carried to the paper's corpus under the assumptions printed first."""
    scale = CLUSTER_CORES / LOCAL_CORES
    lines = ["extrapolated to the paper's corpus (237M documents, 241B tokens; the largest domain 80%):",
             f"  assumptions: 64 executors x 8 cores ({CLUSTER_CORES} task slots) and 64 GPUs (one scoring task "
             "each); slices of 100,000 documents (2,370 slices); 2,048 shuffle partitions for the ranking; the "
             "measured largest-task shares hold at any size (a range partitioner's spread does not depend on the "
             f"row count); a pass over input or output costs what it cost here per row, spread over {scale:.0f}x "
             "the cores (scans and hash joins with no one-task stage)"]
    sizes = numbers(args.rows)
    if sizes:
        largest = max(sizes)
        new = results.get(f"select_by_domain_{largest}")
        if new:
            rows_per_task = PAPER_DOCUMENTS / 2048 * new["even_multiple"]
            lines.append(f"  selection (by domain): largest task {new['even_multiple']:.2f}x an even share at "
                         f"{largest:,} rows -> about {rows_per_task:,.0f} narrow rows in the largest of 2,048 "
                         f"ranking tasks (a window over the domain: 190M rows with their text in one task)")
    for prefix in ("", "connect_"):
        committed = sorted(int(k.split("_")[-1]) for k in results
                           if k.startswith(f"{prefix}slices_") and k[len(prefix):].startswith("slices_"))
        if len(committed) < 2 or committed[0] != 0:
            continue
        empty, top = results[f"{prefix}slices_0"], committed[-1]
        last = results[f"{prefix}slices_{top}"]
        slope = (last["per_slice"] - empty["per_slice"]) / (top / 1e6)
        at_end = empty["per_slice"] + max(0.0, slope) * PAPER_DOCUMENTS / 1e6 / scale
        per_run = {name: last[name] / (top / 1e6) * PAPER_DOCUMENTS / 1e6 / scale
                   for name in ("plan", "first_slice", "final") if last.get(name) == last.get(name)}
        label = "Spark Connect" if prefix else "classic"
        lines.append(f"  slices ({label}): {empty['per_slice']:.2f}s a slice with an empty output, "
                     f"{last['per_slice']:.2f}s with {top:,} rows ({last['per_slice'] / empty['per_slice']:.2f}x); "
                     f"slope {slope:+.3f}s per million committed rows on {LOCAL_CORES} cores -> at 237M documents "
                     f"about {at_end:.2f}s a slice at the end of the run; once per run (each one pass over input "
                     f"and output): " + ", ".join(f"{k.replace('_', ' ')} about {v:.1f}s" for k, v in per_run.items()))
    return lines


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("ATTENTION_INFLUENCE_LOG_LEVEL", "ERROR")
    os.environ.setdefault("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "600")
    from spark_jobs.session import get_spark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results = {}
    if "connect" in parts:
        # First, in a process of its own: a session here would hold the local catalog (Derby admits one
        # process at a time) that the Connect server's session opens too.
        results.update(connect_slices(args, out))
    spark = get_spark("attention-influence-bench-scale")
    if "selection" in parts:
        results.update(selection(spark, args, out))
    if "slices" in parts:
        results.update(slices(spark, args, out))
    if "connect-inner" in parts:
        import json

        print(json.dumps(slices(spark, args, out, connect=True)))
        return
    for line in extrapolate(results, args):
        print(line)
    for key, value in results.items():
        for name, number in value.items():
            print(f"{key}_{name}={number:.4g}" if isinstance(number, float) else f"{key}_{name}={number}")


if __name__ == "__main__":
    main()
