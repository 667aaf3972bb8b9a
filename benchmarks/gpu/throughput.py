"""Throughput steps: the largest batch that fits, the naive per-sample baseline, the UDF's Python path."""

from __future__ import annotations

import time

from benchmarks.gpu.workload import Workload, random_windows, sync


def batch_sweep(work: Workload, start: int, seconds: float, max_points: int = 8) -> dict:
    """Largest batch_tokens whose fused batch of full-length windows runs, with its speed and peak memory."""
    import random

    import torch

    from attention_influence.losses import _is_out_of_memory

    rng = random.Random(0)
    points, batch_tokens, started = [], start, time.perf_counter()
    on_gpu = work.run.on_gpu
    while time.perf_counter() - started < seconds and len(points) < max_points:
        rows = max(1, batch_tokens // work.max_seq_len)
        windows = random_windows(rng, work.tokenizer, rows, work.max_seq_len)
        scorer = work.scorer(batch_tokens=2 * batch_tokens)
        try:
            if on_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            scorer._run(windows, list(range(rows)))  # one batch, no OOM splitting
            sync(work.device)
            t = time.perf_counter()
            scorer._run(windows, list(range(rows)))
            sync(work.device)
            elapsed = time.perf_counter() - t
        except RuntimeError as exc:
            if not _is_out_of_memory(exc):
                raise
            points.append({"batch_tokens": batch_tokens, "fits": False})
            break
        point = {"batch_tokens": batch_tokens, "fits": True, "tokens_per_s": rows * work.max_seq_len / elapsed}
        if on_gpu:
            point["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            free, total = torch.cuda.mem_get_info()
            point["device_memory_gib"] = total / 2**30
        points.append(point)
        batch_tokens *= 2
    if on_gpu:
        torch.cuda.empty_cache()
    fitting = [p for p in points if p["fits"]]
    best = max(fitting, key=lambda p: p["tokens_per_s"]) if fitting else None
    # The scorer's batch_tokens counts the rows of one pass; the fused pass plans half of it per batch.
    return {"points": points, "largest_fitting": 2 * fitting[-1]["batch_tokens"] if fitting else None,
            "fastest": 2 * best["batch_tokens"] if best else None}


def naive(work: Workload, seconds: float) -> dict:
    """What a per-sample scorer does: per window, model(ids, labels=ids) full, then again masked, batch 1."""
    import torch

    from attention_influence.losses import split_windows
    from attention_influence.masking import mask_heads

    model, device = work.model, work.device
    tokens = 0
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for text in work.texts:
            ids = work.tokenizer(text)["input_ids"]
            for window in split_windows(ids, work.max_seq_len):
                if len(window) < 2:
                    continue
                batch = torch.tensor([window], device=device)
                model(input_ids=batch, labels=batch).loss.item()
                with mask_heads(model, work.heads, mode=work.run.masking):
                    model(input_ids=batch, labels=batch).loss.item()
            tokens += len(ids)
            if time.perf_counter() - started > seconds:
                break
    sync(device)
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def udf_function(work: Workload) -> dict:
    """Tokens/s of the UDF's own Python path without Spark: `udfs.influence.score_pooled` over pandas frames.

    The Spark step needs pyspark and a JVM, which a bare GPU machine may lack;
    this measures what is ours in that path on any machine: frames of 2,048
    rows (Spark's Arrow batch in our profiles), text as UTF-8 bytes as
    `score_documents` ships it, pooling, tokenizing the next pool on a thread
    while the model runs, and the output frames. The worker's scorer is put in
    its cache first, so the model load is not timed (as the Spark step's warm-up).
    """
    import pandas as pd

    from attention_influence.loading import device_for_gpu_address
    from udfs import influence

    texts, device = work.texts, work.device
    gpu = "0" if work.run.on_gpu else None
    dtype = str(next(work.model.parameters()).dtype)[6:]
    settings = influence.ScoringSettings(model="(in-memory benchmark model)", heads=tuple(work.heads),
                                         max_seq_len=work.max_seq_len, dtype=dtype, text_col="text",
                                         carry_cols=("id",), batch_tokens=work.batch_tokens, masking=work.run.masking)
    influence._SCORER = (settings, str(device_for_gpu_address(gpu))), work.scorer()
    rows = influence.POOL_ROWS
    frames = [pd.DataFrame({"id": [str(i) for i in range(start, min(start + rows, len(texts)))],
                            "text": [t.encode() for t in texts[start:start + rows]]})
              for start in range(0, len(texts), rows)]
    try:
        sync(device)
        started = time.perf_counter()
        out = list(influence.score_pooled(iter(frames), settings, gpu))
        sync(device)
        elapsed = time.perf_counter() - started
    finally:
        influence._SCORER = None
    scored = pd.concat(out)
    assert len(scored) == len(texts) and (scored["status"] == "ok").all(), "the UDF function lost or failed rows"
    tokens = int(scored["n_tokens"].sum())
    return {"frames": len(frames), "pool_rows": rows, "seconds": elapsed, "tokens": tokens,
            "tokens_per_s": tokens / elapsed}
