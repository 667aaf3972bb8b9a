"""The GPU benchmark (`benchmarks/gpu.sh`): throughput, MFU and memory of the scorer in bfloat16.

For each shape -- the paper's 1.3B selector with random weights and
SmolLM2-135M (its real weights when `--real-model` exists there, else random
weights of its shape; throughput does not depend on the values) -- it measures
tokens/s of the plain loop (fused pass), of two passes, of the naive baseline
(two `model(input_ids, labels=...)` calls per window at batch size 1), the
largest `batch_tokens` that fits with its peak memory, torch.compile against
eager, the model FLOPs utilisation, and once the Spark UDF path on local Spark
with a GPU resource. Every step is timed against `--budget-s`; one that does
not fit is skipped and says so. `--smoke` runs the same code on tiny shapes
on whatever device there is (the test suite runs it on the CPU).

Writes <out>/results.json and <out>/results.txt (the key=value lines).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import flops  # noqa: E402

STARTED = time.monotonic()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, a few seconds each (CPU is fine)")
    p.add_argument("--out", default=str(REPO / "bench-output" / "gpu"))
    p.add_argument("--device", default="auto")
    p.add_argument("--shapes", default="paper-1.3b,smollm2-135m")
    p.add_argument("--real-model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--kv-heads", type=int, default=4, help="key/value heads of the 1.3B shape (our assumption)")
    p.add_argument("--seq", type=int, default=4096, help="max_seq_len of the 1.3B shape (the paper's)")
    p.add_argument("--tokens", type=int, default=262_144, help="tokens per throughput measurement")
    p.add_argument("--doc-tokens", type=int, default=1024, help="about how long each document is (capped at a window)")
    p.add_argument("--batch-tokens", type=int, default=0, help="0: the largest that fits (measured)")
    p.add_argument("--masking", default=None, help="masking mode; default: the library's DEFAULT_MASKING")
    p.add_argument("--spark", default="auto", choices=["auto", "off"], help="the Spark UDF measurement")
    p.add_argument("--spark-master", default=None, help="default local-cluster[1,<cores>,<MB>] (GPU), local[1] (smoke)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="try torch.compile of the decoder layers, and CUDA graphs on a GPU (auto: on a GPU only)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new steps after this many seconds (default 450; 45 with --smoke)")
    return p.parse_args(argv)


def enough(args, seconds: float) -> bool:
    """Time for a step of about `seconds` on a GPU (a tenth of it in --smoke) before --budget-s runs out."""
    return left(args) > (seconds / 10 if args.smoke else seconds)


def left(args) -> float:
    return args.budget_s - (time.monotonic() - STARTED)


def log(*parts):
    print(f"[{time.monotonic() - STARTED:6.1f}s]", *parts, flush=True)


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def shape_config(name: str, args, tokenizer):
    """(transformers config, max_seq_len, masked heads) of a named shape."""
    from transformers import LlamaConfig

    common = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    if args.smoke:
        config = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=name != "paper-1.3b", **common)
        return config, 64, [(2, 0), (3, 1)]
    if name == "paper-1.3b":
        s = flops.PAPER_1_3B
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=args.kv_heads,
                             max_position_embeddings=args.seq, tie_word_embeddings=False, **common)
        # Which heads the paper masks in its 1.3B model is not published: 5% of 320 heads from mid-depth on.
        return config, args.seq, [(8 + i // 4, i % 4 * 5) for i in range(16)]
    if name == "smollm2-135m":
        s = flops.SMOLLM2_135M
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                             max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000, **common)
        return config, 2048, SMOLLM2_HEADS
    raise SystemExit(f"unknown shape {name!r}")


# A fixed, realistic set of 14 heads in layers 17-24 of SmolLM2-135M (about 5% of its 270 heads),
# used where head detection is not run; throughput depends on the first masked layer, not on which heads.
SMOLLM2_HEADS = [(17, 1), (17, 5), (18, 2), (18, 7), (19, 0), (19, 4), (20, 3), (20, 8), (21, 1), (21, 6),
                 (22, 2), (23, 5), (24, 0), (24, 7)]


def documents(tokenizer, target_tokens: int, doc_tokens: int) -> list[str]:
    """Real text (this repository's docs and code, fast to read anywhere) joined into ~`doc_tokens`-token documents."""
    files = sorted(REPO.glob("*.md")) + sorted(REPO.glob("docs/*.md")) + sorted(REPO.glob("attention_influence/*.py")) \
        + sorted(REPO.glob("demo/*.py")) + sorted(REPO.glob("udfs/*.py")) + sorted(REPO.glob("spark_jobs/*.py"))
    pieces = [p for f in files for p in f.read_text(errors="replace").split("\n\n") if p.strip()]
    docs, current, current_tokens, total, i = [], [], 0, 0, 0
    while total < target_tokens:
        piece = pieces[i % len(pieces)]
        i += 1
        current.append(piece)
        current_tokens += len(tokenizer(piece)["input_ids"])
        if current_tokens >= doc_tokens:
            docs.append("\n\n".join(current))
            total += current_tokens
            current, current_tokens = [], 0
    return docs


def scorer_kwargs(args) -> dict:
    """Pass the masking mode where the Scorer takes one (the masking work adds it)."""
    from attention_influence.losses import Scorer

    return {"masking": args.masking} if "masking" in getattr(Scorer, "__dataclass_fields__", {}) else {}


def measure(scorer, texts, device) -> dict:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    scorer.stats.update(real_tokens=0, padded_tokens=0)
    sync(device)
    started = time.perf_counter()
    docs = scorer.score(texts)
    sync(device)
    elapsed = time.perf_counter() - started
    tokens = sum(d.n_tokens or 0 for d in docs if d.status == "ok")
    out = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
           "padding_waste": 1 - scorer.stats["real_tokens"] / max(1, scorer.stats["padded_tokens"])}
    if str(device).startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def naive(model, tokenizer, texts, heads, max_seq_len, device, masking, seconds: float) -> dict:
    """What a per-sample scorer does: per window, model(ids, labels=ids) full, then again masked, batch 1."""
    import torch

    from attention_influence.losses import split_windows
    from attention_influence.masking import mask_heads

    mask_kwargs = {"mode": masking} if masking else {}
    tokens = 0
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            for window in split_windows(ids, max_seq_len):
                if len(window) < 2:
                    continue
                batch = torch.tensor([window], device=device)
                model(input_ids=batch, labels=batch).loss.item()
                with mask_heads(model, heads, **mask_kwargs):
                    model(input_ids=batch, labels=batch).loss.item()
            tokens += len(ids)
            if time.perf_counter() - started > seconds:
                break
    sync(device)
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def random_windows(rng, tokenizer, rows: int, length: int) -> list[list[int]]:
    """Full-length windows of random token ids: a batch whose shape, not its text, is measured."""
    return [[rng.randrange(tokenizer.vocab_size) for _ in range(length)] for _ in range(rows)]


def batch_sweep(model, tokenizer, heads, max_seq_len, device, kwargs, start: int, seconds: float,
                max_points: int = 8) -> dict:
    """Largest batch_tokens whose fused batch of full-length windows runs, with its speed and peak memory."""
    import random

    import torch

    from attention_influence.losses import Scorer, _is_out_of_memory

    rng = random.Random(0)
    points, batch_tokens, started = [], start, time.perf_counter()
    while time.perf_counter() - started < seconds and len(points) < max_points:
        rows = max(1, batch_tokens // max_seq_len)
        windows = random_windows(rng, tokenizer, rows, max_seq_len)
        scorer = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=2 * batch_tokens, fused=True, **kwargs)
        try:
            if str(device).startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            scorer._run(windows, list(range(rows)))  # one batch, no OOM splitting
            sync(device)
            t = time.perf_counter()
            scorer._run(windows, list(range(rows)))
            sync(device)
            elapsed = time.perf_counter() - t
        except RuntimeError as exc:
            if not _is_out_of_memory(exc):
                raise
            points.append({"batch_tokens": batch_tokens, "fits": False})
            break
        point = {"batch_tokens": batch_tokens, "fits": True, "tokens_per_s": rows * max_seq_len / elapsed}
        if str(device).startswith("cuda"):
            point["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            free, total = torch.cuda.mem_get_info()
            point["device_memory_gib"] = total / 2**30
        points.append(point)
        batch_tokens *= 2
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    fitting = [p for p in points if p["fits"]]
    best = max(fitting, key=lambda p: p["tokens_per_s"]) if fitting else None
    # The scorer's batch_tokens counts the rows of one pass; the fused pass plans half of it per batch.
    return {"points": points, "largest_fitting": 2 * fitting[-1]["batch_tokens"] if fitting else None,
            "fastest": 2 * best["batch_tokens"] if best else None}


def spark_udf(args, model_dir: Path, texts, heads, max_seq_len, batch_tokens, device, dtype) -> dict:
    """Tokens/s of udfs.influence on local Spark; the model is loaded by a warm-up job first (reported apart)."""
    try:
        import pyspark
    except ImportError:
        return {"skipped": "pyspark is not installed here"}
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        return {"skipped": "no Java runtime here (Spark needs one)"}
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from udfs.influence import ScoringSettings, score_documents

    on_gpu = str(device).startswith("cuda")
    cores = max(1, min(8, (os.cpu_count() or 2) - 2)) if on_gpu else 1
    master = args.spark_master or (f"local-cluster[1,{cores},16384]" if on_gpu else "local[1]")
    builder = (SparkSession.builder.master(master).appName("attention-influence-gpu-bench")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.python.worker.reuse", "true")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "2048")
               .config("spark.task.cpus", str(cores)).config("spark.executor.cores", str(cores))
               .config("spark.driver.memory", "8g" if on_gpu else "1g")
               .config("spark.executor.memory", "8g" if on_gpu else "1g")
               .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"]))
    if on_gpu:
        script = str(REPO / "conf" / "spark" / "get_gpus_resources.sh")
        builder = (builder.config("spark.worker.resource.gpu.amount", "1")
                   .config("spark.worker.resource.gpu.discoveryScript", script)
                   .config("spark.executor.resource.gpu.amount", "1")
                   .config("spark.executor.resource.gpu.discoveryScript", script)
                   .config("spark.task.resource.gpu.amount", "1"))
    started = time.perf_counter()
    spark = builder.getOrCreate()
    try:
        session_s = time.perf_counter() - started
        kwargs = {"masking": args.masking} if "masking" in ScoringSettings.__dataclass_fields__ and args.masking else {}
        settings = ScoringSettings(model=str(model_dir), heads=tuple(heads), max_seq_len=max_seq_len, dtype=dtype,
                                   text_col="text", carry_cols=("id",), batch_tokens=batch_tokens, **kwargs)

        def run(rows):
            frame = spark.createDataFrame(rows, "id STRING, text STRING").coalesce(1)
            t = time.perf_counter()
            got = score_documents(frame, settings).agg(F.count("*"), F.sum("n_tokens"),
                                                       F.sum(F.when(F.col("status") == "ok", 1).otherwise(0))).first()
            return time.perf_counter() - t, got

        warm_s, _ = run([("w", texts[0])])  # worker start + model load, kept apart
        rows = [(str(i), t) for i, t in enumerate(texts)]
        elapsed, got = run(rows)
        assert got[0] == len(texts), f"UDF returned {got[0]} rows for {len(texts)}"
        return {"master": master, "session_start_s": session_s, "warm_up_s": warm_s, "seconds": elapsed,
                "tokens": int(got[1]), "ok_rows": int(got[2]), "tokens_per_s": int(got[1]) / elapsed}
    finally:
        spark.stop()


def udf_function(model, tokenizer, texts, heads, max_seq_len, batch_tokens, device, kwargs) -> dict:
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
    from attention_influence.losses import Scorer
    from udfs import influence

    gpu = "0" if str(device).startswith("cuda") else None
    settings = influence.ScoringSettings(model="(in-memory benchmark model)", heads=tuple(heads),
                                         max_seq_len=max_seq_len, dtype=str(next(model.parameters()).dtype)[6:],
                                         text_col="text", carry_cols=("id",), batch_tokens=batch_tokens, **kwargs)
    influence._SCORER = (settings, str(device_for_gpu_address(gpu))), Scorer(
        model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True, **kwargs)
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


def profile_fused(name, model, tokenizer, heads, max_seq_len, batch_tokens, device, masking, out_dir: Path,
                  shape, first: int) -> dict:
    """Where one fused batch of full-length windows spends its time, to attribute the gap to the MFU goal.

    Times the decoder layers (with the fan-out and masking hooks) and the LM head with cross-entropy
    apart, on the same hidden states, and both cross-entropy paths of the core (row slices, the GPU's;
    vocabulary blocks with a running log-sum-exp, the CPU's) at a few block sizes, so a GPU run shows
    which to keep. torch.profiler's top operators go to <out>/profile-<shape>.txt.
    """
    import random

    import torch
    from torch.profiler import ProfilerActivity, profile

    from attention_influence import losses
    from attention_influence.masking import DEFAULT_MASKING, checked_heads

    mode = masking or DEFAULT_MASKING
    checked = checked_heads(model, heads, mode)
    rng = random.Random(0)
    rows = max(1, batch_tokens // 2 // max_seq_len)  # the fused pass plans half the budget per batch
    ids = torch.tensor(random_windows(rng, tokenizer, rows, max_seq_len), device=device)
    targets = torch.cat([ids[:, 1:], ids[:, 1:]])
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)

    def timed(fn, repeats: int = 3):
        with torch.inference_mode():
            out = fn()
            sync(device)
            started = time.perf_counter()
            for _ in range(repeats):
                out = fn()
            sync(device)
        return (time.perf_counter() - started) / repeats, out

    layers_s, hidden = timed(lambda: losses._fused_hidden(model, ids, checked, mode))
    head_s, reference = timed(lambda: losses._token_losses(model, hidden, targets))
    tokens = rows * (max_seq_len - 1)
    layer_flops = flops.fused_flops(shape, first, flops.mean_context([max_seq_len])) - 2 * flops.head_flops(shape)
    result = {"rows": rows, "max_seq_len": max_seq_len, "layers_s": layers_s, "head_and_loss_s": head_s,
              "head_and_loss_share": head_s / (layers_s + head_s),
              "layers_tflops_per_s": layer_flops * tokens / layers_s / 1e12,
              "head_tflops_per_s": 2 * flops.head_flops(shape) * tokens / head_s / 1e12}
    blocks = sorted({losses.vocab_block_size(shape.hidden, shape.vocab), 8192, 32768})
    paths = [("row_slices", lambda: losses._row_sliced_losses(head, softcap, hidden, targets, 1 << 25))]
    if isinstance(head, torch.nn.Linear):
        paths += [(f"vocab_blocks_{b}", lambda b=b: losses._vocab_blocked_losses(head, softcap, hidden, targets,
                                                                                1 << 25, b)) for b in blocks]
        if not softcap and hasattr(torch.nn.functional, "linear_cross_entropy"):
            paths.append(("linear_cross_entropy", lambda: losses._builtin_linear_losses(head, hidden, targets)))
        liger = liger_losses(head, hidden, targets)
        if liger is not None:
            paths.append(("liger_fused_linear_cross_entropy", liger))
    exact = float32_reference_losses(head, softcap, hidden, targets)
    result["cross_entropy_paths"] = {}
    for label, fn in paths:
        try:
            seconds, values = timed(fn)
        except Exception as exc:  # noqa: BLE001 - a kernel missing here is a finding, not a crash
            result["cross_entropy_paths"][label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        relative = float((values.mean() - exact.mean()).abs() / exact.mean())
        result["cross_entropy_paths"][label] = {
            "seconds": seconds, "max_abs_difference_from_default": float((values - reference).abs().max()),
            "max_abs_token_difference_from_float32": float((values - exact).abs().max()),
            "relative_mean_difference_from_float32": relative,
            # what the issue asks of a kept kernel: its mean loss within 1e-3 of float32 arithmetic
            "matches_float32": relative <= 1e-3}
    matching = {k: v for k, v in result["cross_entropy_paths"].items() if v.get("matches_float32")}
    result["fastest_matching_cross_entropy"] = min(matching, key=lambda k: matching[k]["seconds"]) if matching else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if str(device).startswith("cuda") else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        losses._batch_losses(model, ids, checked, True, mode)
        sync(device)
    sort = "cuda_time_total" if str(device).startswith("cuda") else "cpu_time_total"
    path = out_dir / f"profile-{name}.txt"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=25) + "\n")
    result["profile_table"] = path.name
    return result


def float32_reference_losses(head, softcap, hidden, targets):
    """Per-token cross-entropy in float32 arithmetic on the same (bfloat16) hidden states and weights,
    a row at a time: what every LM-head kernel is held to."""
    import torch
    import torch.nn.functional as F

    from attention_influence.losses import _softcapped

    weight = head.weight.float()
    bias = head.bias.float() if getattr(head, "bias", None) is not None else None
    rows = []
    with torch.inference_mode():
        for row in range(hidden.shape[0]):
            logits = _softcapped(F.linear(hidden[row].float(), weight, bias), softcap)
            rows.append(F.cross_entropy(logits, targets[row], reduction="none"))
    return torch.stack(rows)


def liger_losses(head, hidden, targets):
    """liger-kernel's fused linear cross-entropy (a Triton wheel, BSD-2) where it is installed and
    there is CUDA; None otherwise. Not a dependency: `pip install liger-kernel` to compare it."""
    import torch

    if not hidden.is_cuda:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerFusedLinearCrossEntropyLoss(reduction="none")
    rows, length, width = hidden.shape
    return lambda: loss(head.weight, hidden.reshape(-1, width), targets.reshape(-1), head.bias).float().view(rows, length)


def differences_from(reference, got) -> tuple[float, float]:
    """(largest relative difference of loss_full or loss_masked, largest absolute difference of the
    influence) between two scorings of the same documents: how the compile and kernel steps check
    themselves against eager before timing anything."""
    worst = max(max(abs(a.loss_full - b.loss_full) / a.loss_full, abs(a.loss_masked - b.loss_masked) / a.loss_masked)
                for a, b in zip(reference, got))
    influence = max(abs(a.attention_influence - b.attention_influence) for a, b in zip(reference, got))
    return worst, influence


ATTENTION_CHOICES_GPU = [None, ("cudnn",), ("flash",), ("efficient",), ("cudnn", "flash")]
ATTENTION_CHOICES_CPU = [None, ("math",), ("flash", "math")]


def attention_kernels(model, tokenizer, texts, heads, max_seq_len, batch_tokens, device, kwargs, seconds: float) -> dict:
    """The fused pass with each choice of SDPA kernels (`Scorer(attention_backends=...)`), each checked
    first against eager attention (the reference: it computes the attention weights the masking
    definition speaks of) on a few documents, then timed on the same quarter of the documents.
    Grouped-query attention reaches the kernels as `enable_gqa` (transformers' sdpa path, no mask)."""
    import torch

    from attention_influence.losses import Scorer

    check, timed_texts = texts[:4], texts[:max(4, len(texts) // 4)]
    before = model.config._attn_implementation
    if before != "sdpa":
        return {"skipped": f"the model runs {before!r} attention, not SDPA"}
    model.set_attn_implementation("eager")
    try:
        eager = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True, **kwargs).score(check)
    finally:
        model.set_attn_implementation(before)
    choices = ATTENTION_CHOICES_GPU if str(device).startswith("cuda") else ATTENTION_CHOICES_CPU
    out, started = {"gqa": model.config.num_key_value_heads < model.config.num_attention_heads, "choices": {}}, time.perf_counter()
    for choice in choices:
        label = "+".join(choice) if choice else "torch_default"
        if time.perf_counter() - started > seconds:
            out["choices"][label] = {"skipped": "time budget"}
            continue
        try:
            scorer = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True,
                            attention_backends=choice, **kwargs)
            got = scorer.score(check)
            errors = [d.error for d in got if d.status != "ok"]
            if errors:
                out["choices"][label] = {"error": str(errors[0]).splitlines()[0][:200]}
                continue
            worst, influence = differences_from(eager, got)
            same = worst < (0.02 if str(device).startswith("cuda") else 1e-4)
            entry = {"max_relative_loss_difference_from_eager": worst, "max_influence_difference_from_eager": influence,
                     "same_losses_as_eager": same}
            if same:
                measure(scorer, timed_texts, device)
                entry.update(measure(scorer, timed_texts, device))
            out["choices"][label] = entry
        except Exception as exc:  # noqa: BLE001 - a kernel this device lacks is a finding
            out["choices"][label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    base = out["choices"].get("torch_default", {}).get("tokens_per_s")
    timed = {k: v for k, v in out["choices"].items() if "tokens_per_s" in v}
    for entry in timed.values():
        if base:
            entry["speedup_vs_torch_default"] = entry["tokens_per_s"] / base
    out["fastest"] = max(timed, key=lambda k: timed[k]["tokens_per_s"]) if timed else None
    if out["fastest"] and base:
        out["fastest_speedup"] = timed[out["fastest"]]["tokens_per_s"] / base
    return out


@contextlib.contextmanager
def compiled_hook_free_parts(model):
    """Within the block, every child of every decoder layer but its attention module runs under
    torch.compile; yields how many modules that is.

    The first compile scheme of this benchmark, kept for comparison: it dates from when the masking
    was forward hooks inside the attention modules, which dynamo does not guard on (run 4b compiled
    whole layers, and the masked pass ran unmasked). The masking is data now (head gates), so
    `compiled_layers` compiles whole decoder layers; this one still compiles the MLP and the norms to
    one graph each, for every batch shape and both halves of the fused pass (tests/test_bench_smoke.py).
    """
    import torch
    import torch._dynamo

    from attention_influence.masking import attention_modules, decoder_layers

    attentions = {id(module) for module in attention_modules(model)}
    parts = [child for layer in decoder_layers(model) for child in layer.children() if id(child) not in attentions]
    torch._dynamo.reset()
    try:
        for part in parts:
            part.forward = torch.compile(part.forward, dynamic=True)
        yield len(parts)
    finally:
        for part in parts:
            part.__dict__.pop("forward", None)
        torch._dynamo.reset()


@contextlib.contextmanager
def compiled_layers(model, mode: str = "default"):
    """Within the block, the decoder layers run under torch.compile in `mode` (attention_influence.compiling:
    whole layers, the head gates read as graph inputs); yields None, or why they stay eager."""
    import torch._dynamo

    from attention_influence.compiling import compile_layers, uncompile_layers

    torch._dynamo.reset()
    try:
        yield compile_layers(model, mode)
    finally:
        uncompile_layers(model)
        torch._dynamo.reset()


def try_compile(model, tokenizer, texts, heads, max_seq_len, batch_tokens, device, kwargs, eager_tps, seconds,
                mode: str = "default"):
    """`compiled_layers` in `mode`, kept only if it scores the same as eager and beats it. The losses
    and, where it is large enough to tell, the influence are compared with eager before any timing."""
    import torch._dynamo

    from attention_influence.losses import Scorer

    check = texts[:4]
    eager = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True, **kwargs).score(check)
    try:
        with compiled_layers(model, mode) as skipped:
            if skipped:
                return {"mode": mode, "skipped": skipped}
            scorer = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True, **kwargs)
            t = time.perf_counter()
            compiled = scorer.score(check)  # compiles
            compile_s = time.perf_counter() - t
            worst, influence = differences_from(eager, compiled)
            scale = max(abs(a.attention_influence) for a in eager)
            # bfloat16 kernels differ a little; a lost mask moves the influence by about its own size
            same = worst < 0.02 and influence <= max(0.1 * scale, 1e-3)
            out = {"mode": mode, "compile_s": compile_s, "max_relative_loss_difference": worst,
                   "max_influence_difference": influence, "max_influence": scale, "same_losses_as_eager": same}
            if not same:
                return {**out, "kept": False, "skipped": "the compiled layers change the losses"}
            if compile_s > seconds:
                return {**out, "skipped": "compiling took longer than the budget left"}
            measure(scorer, texts, device)  # the second run counts, as for eager
            result = measure(scorer, texts, device)
            out["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            return {**out, "tokens_per_s": result["tokens_per_s"], "speedup": result["tokens_per_s"] / eager_tps,
                    "kept": result["tokens_per_s"] > eager_tps}
    except Exception as exc:  # noqa: BLE001 - compile support varies; eager stays
        return {"mode": mode, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}


def bench_shape(name: str, args, device: str, dtype: str, fixture_tokenizer) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer, split_windows

    result: dict = {"shape": name}
    real = Path(args.real_model)
    if name == "smollm2-135m" and not args.smoke and (real / "model.safetensors").exists():
        model, tokenizer = load_model(str(real), dtype=dtype, device=device)
        config, max_seq_len, heads = model.config, 2048, SMOLLM2_HEADS
        result["weights"] = f"real ({real})"
        model_dir = real
    else:
        tokenizer = fixture_tokenizer
        config, max_seq_len, heads = shape_config(name, args, tokenizer)
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
        result["weights"] = "random"
        model_dir = None
    shape = flops.Shape.of(model.config)
    first = min(layer for layer, _ in heads)
    result.update(layers=shape.layers, hidden=shape.hidden, heads=shape.heads, kv_heads=shape.kv_heads,
                  ffn=shape.ffn, vocab=shape.vocab, max_seq_len=max_seq_len, masked_heads=heads,
                  first_masked_layer=first, params=sum(p.numel() for p in model.parameters()),
                  attention=model.config._attn_implementation)
    kwargs = scorer_kwargs(args)
    masking = args.masking
    log(f"{name}: {result['params'] / 1e6:.0f}M params, {result['weights']} weights, seq {max_seq_len}")

    sweep_start = max(max_seq_len, 4096 if not args.smoke else max_seq_len)
    if args.batch_tokens:
        batch_tokens = args.batch_tokens
    else:
        result["batch_sweep"] = batch_sweep(model, tokenizer, heads, max_seq_len, device, kwargs, sweep_start,
                                            seconds=min(60, max(5, left(args) / 6)), max_points=3 if args.smoke else 8)
        batch_tokens = result["batch_sweep"]["fastest"] or 2 * sweep_start
        log(f"{name}: batch sweep {result['batch_sweep']['points']}")
    result["batch_tokens"] = batch_tokens

    texts = documents(tokenizer, args.tokens, doc_tokens=min(args.doc_tokens, max_seq_len))
    lengths = [len(w) for t in texts for w in split_windows(tokenizer(t)["input_ids"], max_seq_len)]
    context = flops.mean_context(lengths)
    result.update(documents=len(texts), mean_window_tokens=sum(lengths) / len(lengths), mean_context=context)
    log(f"{name}: {len(texts)} documents, {sum(lengths)} tokens")
    result["fused_flops_per_token"] = flops.fused_flops(shape, first, context)
    result["two_pass_flops_per_token"] = flops.two_pass_flops(shape, context)
    result["predicted_fused_vs_two_pass"] = flops.predicted_fused_ratio(shape, first, context)

    Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=True, **kwargs).score(texts[:2])
    for fused in (True, False):
        if not enough(args, 20):
            result[f"{'fused' if fused else 'two_pass'}_skipped"] = "time budget"
            continue
        scorer = Scorer(model, tokenizer, heads, max_seq_len, batch_tokens=batch_tokens, fused=fused, **kwargs)
        # Twice, the second counts: the first run meets each batch shape's kernels and allocations first.
        warm = measure(scorer, texts, device)
        result["fused" if fused else "two_pass"] = {**measure(scorer, texts, device),
                                                    "first_run_tokens_per_s": warm["tokens_per_s"]}
        log(f"{name}: {'fused' if fused else 'two-pass'} {result['fused' if fused else 'two_pass']}")
    if "fused" in result and "two_pass" in result:
        result["fused_vs_two_pass"] = result["fused"]["tokens_per_s"] / result["two_pass"]["tokens_per_s"]
    if "fused" in result:
        peak = flops.peak_bf16_tflops(torch.cuda.get_device_name()) if device.startswith("cuda") else None
        result["mfu"] = flops.mfu(result["fused_flops_per_token"], result["fused"]["tokens_per_s"], peak)
        if enough(args, 20):
            warm = udf_function(model, tokenizer, texts, heads, max_seq_len, batch_tokens, device, kwargs)
            result["udf_function"] = {**udf_function(model, tokenizer, texts, heads, max_seq_len, batch_tokens,
                                                     device, kwargs), "first_run_tokens_per_s": warm["tokens_per_s"]}
            result["udf_function_vs_plain"] = result["udf_function"]["tokens_per_s"] / result["fused"]["tokens_per_s"]
            log(f"{name}: UDF function without Spark {result['udf_function']}")
        if enough(args, 20):
            result["naive"] = naive(model, tokenizer, texts, heads, max_seq_len, device, masking,
                                    seconds=min(30, left(args) / 4))
            result["plain_vs_naive"] = result["fused"]["tokens_per_s"] / result["naive"]["tokens_per_s"]
            log(f"{name}: naive {result['naive']}")
        if enough(args, 20):
            result["profile"] = profile_fused(name, model, tokenizer, heads, max_seq_len, batch_tokens, device,
                                              masking, Path(args.out), shape, first)
            log(f"{name}: profile of one fused batch {result['profile']}")
        if enough(args, 40):
            result["attention_kernels"] = attention_kernels(model, tokenizer, texts, heads, max_seq_len, batch_tokens,
                                                            device, kwargs, seconds=min(60, left(args) / 5))
            log(f"{name}: attention kernels {result['attention_kernels']}")
        if (args.compile == "on" or (args.compile == "auto" and device.startswith("cuda"))) and enough(args, 120):
            # whole layers compiled, then with CUDA graphs on top where there is CUDA; the faster is reported
            result["compile_modes"] = {}
            for mode in ["default"] + (["reduce-overhead"] if device.startswith("cuda") else []):
                if enough(args, 60):
                    result["compile_modes"][mode] = try_compile(
                        model, tokenizer, texts, heads, max_seq_len, batch_tokens, device, kwargs,
                        result["fused"]["tokens_per_s"], seconds=min(90, left(args) / 3), mode=mode)
                    log(f"{name}: torch.compile {result['compile_modes'][mode]}")
            timed = [r for r in result["compile_modes"].values() if "speedup" in r]
            result["compile"] = (max(timed, key=lambda r: r["speedup"]) if timed
                                 else next(iter(result["compile_modes"].values()), {}))
    result["_model"] = (model, tokenizer, texts, heads, max_seq_len, batch_tokens, model_dir)
    return result


def main(argv=None):
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    from attention_influence.loading import device_from_flag

    if args.smoke:
        args.tokens = min(args.tokens, 2000)
    if args.budget_s is None:
        args.budget_s = 45 if args.smoke else 450
    if args.masking is None:
        from attention_influence.masking import DEFAULT_MASKING

        args.masking = DEFAULT_MASKING
    if "masking" not in scorer_kwargs(args):
        args.masking = None  # this version of the core masks with zero-output only
    device = device_from_flag(args.device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
            "dtype": dtype, "torch": torch.__version__, "smoke": args.smoke, "masking": args.masking or "zero-output",
            "kv_heads_assumed_for_1.3b": args.kv_heads, "command": " ".join(sys.argv)}
    if device.startswith("cuda"):
        info["peak_bf16_tflops"] = flops.peak_bf16_tflops(info["device"])
    log(f"device {info['device']}, {dtype}")
    fixture_tokenizer = AutoTokenizer.from_pretrained(REPO / "fixtures" / "tiny-llama")
    fixture_tokenizer.model_max_length = int(1e30)
    shapes = {}
    for name in [s for s in args.shapes.split(",") if s]:
        if not enough(args, 30):
            shapes[name] = {"skipped": "time budget"}
            continue
        try:
            shapes[name] = bench_shape(name, args, device, dtype, fixture_tokenizer)
        except Exception as exc:  # noqa: BLE001 - one shape failing keeps the others' numbers
            traceback.print_exc()
            shapes[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}

    # The Spark UDF path, once, on the first shape measured (it needs a saved checkpoint for the workers).
    spark_shape = next((n for n, r in shapes.items() if "_model" in r), None)
    if args.spark != "off" and spark_shape and enough(args, 60):
        model, tokenizer, texts, heads, max_seq_len, batch_tokens, model_dir = shapes[spark_shape]["_model"]
        try:
            if model_dir is None:
                model_dir = out / "spark-model"
                model.save_pretrained(model_dir)
                tokenizer.save_pretrained(model_dir)
            udf = spark_udf(args, Path(model_dir), texts, heads, max_seq_len, batch_tokens, device, dtype)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            udf = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        finally:
            if model_dir == out / "spark-model":
                shutil.rmtree(model_dir, ignore_errors=True)
        shapes[spark_shape]["udf"] = udf
        if "tokens_per_s" in udf:
            shapes[spark_shape]["udf_vs_plain"] = udf["tokens_per_s"] / shapes[spark_shape]["fused"]["tokens_per_s"]
        log(f"{spark_shape}: Spark UDF {udf}")
    for result in shapes.values():
        result.pop("_model", None)

    lines = key_values(shapes)
    (out / "results.json").write_text(json.dumps({"info": info, "shapes": shapes}, indent=2, default=str))
    (out / "results.txt").write_text("".join(f"{k}={v}\n" for k, v in lines))
    print(json.dumps(info))
    for key, value in lines:
        print(f"{key}={value}")
    return shapes


def key_values(shapes: dict) -> list[tuple[str, str]]:
    lines = []
    for name, r in shapes.items():
        tag = name.replace("-", "_").replace(".", "_")
        for key, path in [("plain_tokens_per_s", ("fused", "tokens_per_s")),
                          ("two_pass_tokens_per_s", ("two_pass", "tokens_per_s")),
                          ("naive_tokens_per_s", ("naive", "tokens_per_s")),
                          ("udf_tokens_per_s", ("udf", "tokens_per_s")),
                          ("peak_memory_gib", ("fused", "peak_memory_gib")),
                          ("batch_tokens", ("batch_tokens",)),
                          ("largest_batch_tokens", ("batch_sweep", "largest_fitting")),
                          ("fused_vs_two_pass", ("fused_vs_two_pass",)),
                          ("predicted_fused_vs_two_pass", ("predicted_fused_vs_two_pass",)),
                          ("vs_naive", ("plain_vs_naive",)),
                          ("udf_vs_plain", ("udf_vs_plain",)),
                          ("udf_function_tokens_per_s", ("udf_function", "tokens_per_s")),
                          ("udf_function_vs_plain", ("udf_function_vs_plain",)),
                          ("mfu", ("mfu",)),
                          ("head_and_loss_share", ("profile", "head_and_loss_share")),
                          ("layers_tflops_per_s", ("profile", "layers_tflops_per_s")),
                          ("head_tflops_per_s", ("profile", "head_tflops_per_s")),
                          ("fastest_cross_entropy", ("profile", "fastest_matching_cross_entropy")),
                          ("fastest_attention", ("attention_kernels", "fastest")),
                          ("fastest_attention_speedup", ("attention_kernels", "fastest_speedup")),
                          ("compile_speedup", ("compile", "speedup")),
                          ("compile_mode", ("compile", "mode"))]:
            value = r
            for part in path:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                lines.append((f"{tag}_{key}", f"{value:.4g}" if isinstance(value, float) else str(value)))
        for problem in ("error", "skipped"):
            if problem in r:
                lines.append((f"{tag}_{problem}", str(r[problem]).replace("\n", " ")))
    return lines


if __name__ == "__main__":
    main()
