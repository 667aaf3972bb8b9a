"""AttentionInfluence as a `mapInPandas` function: Iterator[pd.DataFrame] -> Iterator[pd.DataFrame].

The model is loaded once per Python worker (cached in this module, which a
reused worker keeps between tasks), on the GPU that Spark assigned to the
task (`TaskContext.get().resources()["gpu"]`), on the CPU when none is.
Both losses come out of one function, so one process holds one model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import pandas as pd

SCORE_COLUMNS = [
    ("n_tokens", "INT"),
    ("loss_full", "DOUBLE"),
    ("loss_masked", "DOUBLE"),
    ("attention_influence", "DOUBLE"),
    ("status", "STRING"),
    ("error", "STRING"),
]
TOKEN_LOSS_COLUMNS = [("token_loss_full", "ARRAY<FLOAT>"), ("token_loss_masked", "ARRAY<FLOAT>")]


@dataclass(frozen=True)
class ScoringSettings:
    """Everything a worker needs to build its scorer; picklable, hashable (the cache key)."""

    model: str
    heads: tuple[tuple[int, int], ...]
    max_seq_len: int
    dtype: str  # resolved: float32 | bfloat16
    text_col: str
    carry_cols: tuple[str, ...]
    batch_tokens: int = 16384
    token_losses: bool = False
    fused: bool = True
    max_chars: int = 1_000_000
    revision: str | None = None
    masking: str = "uniform"  # attention_influence.masking.MASKING_MODES; the core validates it
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False
    # Per-task and per-worker lines on stderr (the executor's log) and transformers' loading bar; not
    # part of the cache key: the scorer is the same either way.
    verbose: bool = field(default=False, compare=False)

    def output_ddl(self, input_schema) -> str:
        """DDL of the function's output: the carried input columns, then the score columns."""
        carried = [f"`{f.name.replace('`', '``')}` {f.dataType.simpleString()}" for f in input_schema.fields
                   if f.name in self.carry_cols]
        scores = SCORE_COLUMNS + (TOKEN_LOSS_COLUMNS if self.token_losses else [])
        return ", ".join(carried + [f"{name} {kind}" for name, kind in scores])


# The worker's one scorer and the (settings, device) it was built for: a new key replaces it, so one
# Python worker never holds two models.
_SCORER: tuple[tuple, object] | None = None


def _assigned_gpu() -> str | None:
    from pyspark import TaskContext

    context = TaskContext.get()
    gpus = context.resources().get("gpu") if context is not None else None
    return gpus.addresses[0] if gpus is not None and gpus.addresses else None


def get_scorer(settings: ScoringSettings, gpu: str | None):
    """The worker's scorer for these settings and this device, built on first use."""
    global _SCORER
    from attention_influence.loading import device_for_gpu_address, show_loading_bar
    from attention_influence.losses import Scorer

    device = device_for_gpu_address(gpu)
    key = (settings, str(device))
    if _SCORER is None or _SCORER[0] != key:
        _SCORER = None  # one model per worker: drop a previous one before loading
        if device.type == "cpu":  # tasks run side by side: one thread per task core, not all cores each
            import torch
            from pyspark import TaskContext

            context = TaskContext.get()
            torch.set_num_threads(max(1, context.cpus() if context is not None else 1))
        started = time.time()
        show_loading_bar(settings.verbose)
        model, tokenizer = _load_on_executor(settings, device)
        _SCORER = key, Scorer(model, tokenizer, settings.heads, settings.max_seq_len,
                              batch_tokens=settings.batch_tokens, fused=settings.fused,
                              token_losses=settings.token_losses, max_chars=settings.max_chars,
                              masking=settings.masking)
        if settings.verbose:
            print(f"[attention-influence] loaded {settings.model} on {device} ({settings.dtype}) "
                  f"in {time.time() - started:.1f}s", file=sys.stderr, flush=True)
    return _SCORER[1]


def _load_on_executor(settings: ScoringSettings, device):
    """The model, or one line that says an executor cannot read a local model path (and from where)."""
    import socket

    from attention_influence.loading import ModelLoadError, load_model

    try:
        return load_model(settings.model, dtype=settings.dtype, device=device, revision=settings.revision,
                          trust_remote_code=settings.trust_remote_code,
                          allow_pickle_weights=settings.allow_pickle_weights)
    except ModelLoadError as exc:
        if os.path.isabs(settings.model) and not os.path.exists(settings.model):
            raise ModelLoadError(f"model path {settings.model} is not readable on executor {socket.gethostname()} "
                                 f"(working directory {os.getcwd()}): a local --model must be at the same path "
                                 f"on every executor") from None
        raise exc from None


def _output_frame(frame: pd.DataFrame, docs, settings: ScoringSettings) -> pd.DataFrame:
    """The carried columns of `frame` plus the score columns of `docs`, row for row."""
    out = frame[[c for c in frame.columns if c in settings.carry_cols]].copy()
    out["n_tokens"] = pd.array([d.n_tokens for d in docs], dtype="Int32")
    out["loss_full"] = pd.array([d.loss_full for d in docs], dtype="Float64")
    out["loss_masked"] = pd.array([d.loss_masked for d in docs], dtype="Float64")
    out["attention_influence"] = pd.array([d.attention_influence for d in docs], dtype="Float64")
    out["status"] = [d.status for d in docs]
    out["error"] = [d.error for d in docs]
    if settings.token_losses:
        out["token_loss_full"] = [d.token_loss_full for d in docs]
        out["token_loss_masked"] = [d.token_loss_masked for d in docs]
    return out


# Rows gathered into one pool before planning token-budget batches: bigger pools sort more windows by
# length (less padding, full batches). While a pool runs, the rows of the documents it has finished
# and progress rows for the work done are yielded every PART_SECONDS of work, which is when the
# driver's progress can count them (spark_jobs/progress.py); the batching does not change.
POOL_ROWS = 2048
PART_SECONDS = float(os.environ.get("ATTENTION_INFLUENCE_PART_SECONDS", "10"))  # the executors' environment
# The status of a progress row (every other column null): `score_documents` drops them again.
PROGRESS_STATUS = "progress"


def _pools(frames: Iterator[pd.DataFrame], pool_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of `frames` in order, regrouped into pools of `pool_rows` rows (the last one smaller)."""
    held: list[pd.DataFrame] = []
    rows = 0
    for frame in frames:
        if not len(frame):
            continue
        held.append(frame)
        rows += len(frame)
        while rows >= pool_rows:
            joined = pd.concat(held, ignore_index=True) if len(held) > 1 else held[0].reset_index(drop=True)
            yield joined.iloc[:pool_rows].reset_index(drop=True)
            rest = joined.iloc[pool_rows:]
            held, rows = ([rest] if len(rest) else []), len(rest)
    if held:
        yield pd.concat(held, ignore_index=True) if len(held) > 1 else held[0].reset_index(drop=True)


def _ahead(items: Iterator, depth: int = 1) -> Iterator:
    """`items`, produced on a background thread up to `depth` ahead of the consumer.

    Reading Arrow batches and tokenizing (which release the GIL for much of
    their work) then overlap with the model; an exception in the producer is
    raised in the consumer.
    """
    import queue
    import threading

    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put((done, exc))

    thread = threading.Thread(target=produce, name="attention-influence-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = buffer.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()


class _PoolWork:
    """How much of a pool is scored, in documents' worth: a document without windows is worth one at
    once, the others `windowed` together, handed out in proportion to their window tokens scored (the
    scorer's `stats`). A pool is worth its rows in all, so the driver knows the whole (its documents)."""

    def __init__(self, scorer, prepared):
        self.scorer = scorer
        self.started_at = scorer.stats["real_tokens"]
        self.documents = len(prepared)
        self.windowed = len(set(prepared.owners))
        self.tokens = sum(len(w) for w in prepared.windows)
        self.counted = 0

    def newly_done(self, finished: bool = False) -> int:
        """Documents' worth scored since the last call; the rest of the pool when `finished`."""
        if finished or not self.tokens:
            worth = self.documents
        else:
            scored = min(self.scorer.stats["real_tokens"] - self.started_at, self.tokens)
            worth = self.documents - self.windowed + self.windowed * scored // self.tokens
        new = max(0, worth - self.counted)
        self.counted += new
        return new


def _progress_frame(columns: list[str], rows: int) -> pd.DataFrame:
    """`rows` progress rows: status PROGRESS_STATUS, every other column null."""
    frame = pd.DataFrame({column: [None] * rows for column in columns})
    frame["status"] = PROGRESS_STATUS
    return frame


def score_pooled(frames: Iterator[pd.DataFrame], settings: ScoringSettings, gpu: str | None,
                 pool_rows: int = POOL_ROWS, part_seconds: float | None = PART_SECONDS,
                 progress_rows: bool = False) -> Iterator[pd.DataFrame]:
    """Score pools of rows, reading and tokenizing the next pool while the model runs.

    Each input row comes out exactly once: in frames of the documents a pool has finished, every
    `part_seconds` of work (None: one frame per pool, in input order); a document that breaks the
    model becomes one `error` row (`Scorer.finish_isolated_in_parts`). With `progress_rows`, each
    part is followed by a frame of progress rows, one per document's worth of work done since the
    last (`_PoolWork`): a pool's rows in all. The model loads (once per worker) when the first pool
    is read, so an empty partition never loads it.
    """

    def prepared():
        for pool in _pools(frames, pool_rows):
            scorer = get_scorer(settings, gpu)
            yield pool, scorer, scorer.prepare(pool[settings.text_col].tolist())

    for pool, scorer, ready in _ahead(prepared()):
        work, columns = _PoolWork(scorer, ready), list(_output_frame(pool.iloc[:0], [], settings).columns)
        for part in scorer.finish_isolated_in_parts(ready, part_seconds):
            if part:
                part.sort(key=lambda item: item[0])
                yield _output_frame(pool.iloc[[i for i, _ in part]], [doc for _, doc in part], settings)
            if progress_rows and (done := work.newly_done()):
                yield _progress_frame(columns, done)
        if progress_rows and (done := work.newly_done(finished=True)):
            yield _progress_frame(columns, done)


_CPU_FALLBACK_SAID = False


def _record_task(gpu: str | None, verbose: bool) -> None:
    """With `verbose`, one stderr line per scoring task (the executor's log): which GPU Spark handed it.

    On a GPU cluster this is how to check the scheduling (the tests read it); a
    GPU address without a CUDA device behind it (placeholder GPUs) means CPU
    scoring, said once per Python worker, verbose or not.
    """
    global _CPU_FALLBACK_SAID
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return
    gpus = context.resources().get("gpu")
    addresses = list(gpus.addresses) if gpus is not None else []
    if verbose:
        print(f"[attention-influence] task stage={context.stageId()} partition={context.partitionId()} "
              f"attempt={context.attemptNumber()} gpu_addresses={json.dumps(addresses)} pid={os.getpid()} "
              f"code={__file__}", file=sys.stderr, flush=True)
    if gpu is not None and not _CPU_FALLBACK_SAID:
        from attention_influence.loading import device_for_gpu_address

        if device_for_gpu_address(gpu).type == "cpu":
            _CPU_FALLBACK_SAID = True
            print(f"[attention-influence] GPU {gpu} assigned by Spark but CUDA is not available here: "
                  f"scoring on the CPU (placeholder GPU)", file=sys.stderr, flush=True)


TEST_FAULT_ENV = "ATTENTION_INFLUENCE_TEST_FAULT"


def _inject_test_fault(texts=None) -> None:
    """Fault injection for the cluster tests only; inert unless the executors' environment has
    ATTENTION_INFLUENCE_TEST_FAULT (spark.executorEnv...), which no profile or job sets:
      sleep:SECONDS           every task sleeps first (a job long enough to kill something mid-way)
      exit-once:MARKER        the Python worker exits on the first attempt of a task holding a
                              document that contains MARKER (at least 32 characters)
      exit-always:MARKER      ... on every attempt
    """
    fault = os.environ.get(TEST_FAULT_ENV)
    if not fault:
        return
    action, _, argument = fault.partition(":")
    if action == "sleep" and texts is None:  # at the start of a task
        time.sleep(float(argument))
        return
    if action not in ("exit-once", "exit-always") or len(argument) < 32 or texts is None:
        return
    from pyspark import TaskContext

    context = TaskContext.get()
    if action == "exit-once" and context is not None and context.attemptNumber() > 0:
        return
    marker = argument.encode()
    if any(marker in (t.encode() if isinstance(t, str) else t) for t in texts if t is not None):
        print(f"[attention-influence] test fault {action}: Python worker {os.getpid()} exits", file=sys.stderr,
              flush=True)
        os._exit(17)


def _with_test_faults(frames: Iterator[pd.DataFrame], text_col: str) -> Iterator[pd.DataFrame]:
    """`frames`, passing each through the cluster tests' fault hook first (inert unless its variable is set)."""
    for frame in frames:
        if len(frame):
            _inject_test_fault(frame[text_col].tolist())
        yield frame


def make_score_partition(settings: ScoringSettings, counters=None):
    """The function to hand to `DataFrame.mapInPandas(fn, settings.output_ddl(schema))`.

    `counters`: optional (documents, tokens) Spark accumulators, added to after each frame, that
    the driver reads to print progress (spark_jobs/progress.py). Its output holds progress rows
    (`score_pooled`), which `score_documents` drops.
    """

    def score_partition(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        gpu = _assigned_gpu()
        _record_task(gpu, settings.verbose)
        if os.environ.get(TEST_FAULT_ENV):
            _inject_test_fault()
            frames = _with_test_faults(frames, settings.text_col)
        for scored in score_pooled(frames, settings, gpu, progress_rows=True):
            if counters is not None and scored["status"].iat[0] != PROGRESS_STATUS:
                counters[0].add(len(scored))
                counters[1].add(int(scored["n_tokens"].fillna(0).sum()))
            yield scored

    return score_partition


def score_documents(documents, settings: ScoringSettings, counters=None):
    """`documents` with the score columns, one output row per input row.

    Text travels to Python as bytes, so a string that is not valid UTF-8 becomes
    a row with status 'error' instead of an Arrow failure that stops the job. The
    progress rows of the scoring function are dropped right after it: the filter
    directly above the MapInPandas node, whose output rows the driver's progress
    compares with its own (spark_jobs/progress.py).
    """
    from pyspark.sql import functions as F

    text_type = documents.schema[settings.text_col].dataType.simpleString()
    text = F.col("`" + settings.text_col.replace("`", "``") + "`")  # a name, never parsed
    as_bytes = documents.withColumn(settings.text_col, text.cast("binary"))
    scored = (as_bytes.mapInPandas(make_score_partition(settings, counters), settings.output_ddl(as_bytes.schema))
              .filter(~F.col("status").eqNullSafe(PROGRESS_STATUS)))
    if settings.text_col in settings.carry_cols:
        scored = scored.withColumn(settings.text_col, text.cast(text_type))
    return scored
