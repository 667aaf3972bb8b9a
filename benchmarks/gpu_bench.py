"""The GPU benchmark (`benchmarks/gpu.sh`): throughput, MFU and memory of the scorer in bfloat16.

For each shape -- the paper's 1.3B selector with random weights and
SmolLM2-135M (its real weights when `--real-model` exists there, else random
weights of its shape; throughput does not depend on the values) -- it measures
tokens/s of the plain loop (fused pass), of two passes, of the naive baseline
(two `model(input_ids, labels=...)` calls per window at batch size 1), the
largest `batch_tokens` that fits with its peak memory, torch.compile against
eager, the model FLOPs utilisation, and once the Spark UDF path on local Spark
in the session of conf/spark/gpu.conf. Every step is timed against `--budget-s`;
one that does not fit is skipped and says so. `--smoke` runs the same code on
tiny shapes on whatever device there is (the test suite runs it on the CPU).

Writes <out>/results.json and <out>/results.txt (the key=value lines). This file
runs the steps; each lives in a module of benchmarks/gpu/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import flops  # noqa: E402
from benchmarks.gpu import attention, compiling, profiling, spark_udf, throughput  # noqa: E402
from benchmarks.gpu.shapes import documents, shape_workload  # noqa: E402
from benchmarks.gpu.workload import RunSettings, Workload, failure, measure  # noqa: E402


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


def run_settings(args, started: float) -> RunSettings:
    """The flags with their run-time defaults filled in: --smoke's caps, the device and its dtype."""
    from attention_influence.loading import device_from_flag
    from attention_influence.masking import DEFAULT_MASKING

    device = device_from_flag(args.device)
    return RunSettings(
        out=Path(args.out), device=device, dtype="bfloat16" if device.startswith("cuda") else "float32",
        smoke=args.smoke, shapes=tuple(s for s in args.shapes.split(",") if s), real_model=Path(args.real_model),
        kv_heads=args.kv_heads, seq=args.seq, tokens=min(args.tokens, 2000) if args.smoke else args.tokens,
        doc_tokens=args.doc_tokens, batch_tokens=args.batch_tokens, masking=args.masking or DEFAULT_MASKING,
        spark=args.spark, spark_master=args.spark_master, compile=args.compile,
        budget_s=args.budget_s if args.budget_s is not None else (45 if args.smoke else 450), started=started)


def bench_shape(name: str, run: RunSettings, fixture_tokenizer) -> tuple[dict, Workload]:
    """Every step but Spark's on one shape, each while the budget allows: its results and its workload."""
    import torch

    from attention_influence.losses import split_windows

    work = shape_workload(name, run, fixture_tokenizer)
    model, tokenizer, max_seq_len, heads = work.model, work.tokenizer, work.max_seq_len, work.heads
    result: dict = {"shape": name, "weights": f"real ({work.model_dir})" if work.model_dir else "random"}
    shape, first = work.shape, work.first_masked_layer
    result.update(layers=shape.layers, hidden=shape.hidden, heads=shape.heads, kv_heads=shape.kv_heads,
                  ffn=shape.ffn, vocab=shape.vocab, max_seq_len=max_seq_len, masked_heads=heads,
                  first_masked_layer=first, params=sum(p.numel() for p in model.parameters()),
                  attention=model.config._attn_implementation)
    run.log(f"{name}: {result['params'] / 1e6:.0f}M params, {result['weights']} weights, seq {max_seq_len}")

    sweep_start = max(max_seq_len, 4096 if not run.smoke else max_seq_len)
    if run.batch_tokens:
        batch_tokens = run.batch_tokens
    else:
        result["batch_sweep"] = throughput.batch_sweep(work, sweep_start, max_points=3 if run.smoke else 8,
                                                       seconds=min(60, max(5, run.seconds_left() / 6)))
        batch_tokens = result["batch_sweep"]["fastest"] or 2 * sweep_start
        run.log(f"{name}: batch sweep {result['batch_sweep']['points']}")
    result["batch_tokens"] = batch_tokens

    texts = documents(tokenizer, run.tokens, doc_tokens=min(run.doc_tokens, max_seq_len))
    work = replace(work, batch_tokens=batch_tokens, texts=texts)
    lengths = [len(w) for t in texts for w in split_windows(tokenizer(t)["input_ids"], max_seq_len)]
    context = flops.mean_context(lengths)
    result.update(documents=len(texts), mean_window_tokens=sum(lengths) / len(lengths), mean_context=context)
    run.log(f"{name}: {len(texts)} documents, {sum(lengths)} tokens")
    result["fused_flops_per_token"] = flops.fused_flops(shape, first, context)
    result["two_pass_flops_per_token"] = flops.two_pass_flops(shape, context)
    result["predicted_fused_vs_two_pass"] = flops.predicted_fused_ratio(shape, first, context)

    work.scorer().score(texts[:2])
    for fused in (True, False):
        key = "fused" if fused else "two_pass"
        if not run.enough(20):
            result[f"{key}_skipped"] = "time budget"
            continue
        scorer = work.scorer(fused=fused)
        # Twice, the second counts: the first run meets each batch shape's kernels and allocations first.
        warm = measure(scorer, texts, run.device)
        result[key] = {**measure(scorer, texts, run.device), "first_run_tokens_per_s": warm["tokens_per_s"]}
        run.log(f"{name}: {'fused' if fused else 'two-pass'} {result[key]}")
    if "fused" in result and "two_pass" in result:
        result["fused_vs_two_pass"] = result["fused"]["tokens_per_s"] / result["two_pass"]["tokens_per_s"]
    if "fused" in result:
        peak = flops.peak_bf16_tflops(torch.cuda.get_device_name()) if run.on_gpu else None
        result["mfu"] = flops.mfu(result["fused_flops_per_token"], result["fused"]["tokens_per_s"], peak)
        further_steps(work, result)
    return result, work


def further_steps(work: Workload, result: dict) -> None:
    """The steps measured against the fused pass (its tokens/s in `result`), each while the budget allows."""
    run, name, plain = work.run, work.name, result["fused"]["tokens_per_s"]
    if run.enough(20):
        warm = throughput.udf_function(work)
        result["udf_function"] = {**throughput.udf_function(work), "first_run_tokens_per_s": warm["tokens_per_s"]}
        result["udf_function_vs_plain"] = result["udf_function"]["tokens_per_s"] / plain
        run.log(f"{name}: UDF function without Spark {result['udf_function']}")
    if run.enough(20):
        result["naive"] = throughput.naive(work, seconds=min(30, run.seconds_left() / 4))
        result["plain_vs_naive"] = plain / result["naive"]["tokens_per_s"]
        run.log(f"{name}: naive {result['naive']}")
    if run.enough(20):
        result["profile"] = profiling.profile_fused(work)
        run.log(f"{name}: profile of one fused batch {result['profile']}")
    if run.enough(40):
        result["attention_kernels"] = attention.attention_kernels(work, seconds=min(60, run.seconds_left() / 5))
        run.log(f"{name}: attention kernels {result['attention_kernels']}")
    if (run.compile == "on" or (run.compile == "auto" and run.on_gpu)) and run.enough(120):
        # whole layers compiled, then with CUDA graphs on top where there is CUDA; the faster is reported
        result["compile_modes"] = {}
        for mode in ["default"] + (["reduce-overhead"] if run.on_gpu else []):
            if run.enough(60):
                result["compile_modes"][mode] = compiling.try_compile(
                    work, plain, seconds=min(90, run.seconds_left() / 3), mode=mode)
                run.log(f"{name}: torch.compile {result['compile_modes'][mode]}")
        timed = [r for r in result["compile_modes"].values() if "speedup" in r]
        result["compile"] = (max(timed, key=lambda r: r["speedup"]) if timed
                             else next(iter(result["compile_modes"].values()), {}))


def main(argv=None):
    started = time.monotonic()
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer

    run = run_settings(args, started)
    run.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    info = {"device": torch.cuda.get_device_name() if run.on_gpu else f"cpu ({os.cpu_count()} cores)",
            "dtype": run.dtype, "torch": torch.__version__, "smoke": run.smoke, "masking": run.masking,
            "kv_heads_assumed_for_1.3b": run.kv_heads, "command": " ".join(sys.argv)}
    if run.on_gpu:
        info["peak_bf16_tflops"] = flops.peak_bf16_tflops(info["device"])
    run.log(f"device {info['device']}, {run.dtype}")
    fixture_tokenizer = AutoTokenizer.from_pretrained(REPO / "fixtures" / "tiny-llama")
    fixture_tokenizer.model_max_length = int(1e30)
    shapes, workloads = {}, {}
    for name in run.shapes:
        if not run.enough(30):
            shapes[name] = {"skipped": "time budget"}
            continue
        try:
            shapes[name], workloads[name] = bench_shape(name, run, fixture_tokenizer)
        except Exception as exc:  # noqa: BLE001 - one shape failing keeps the others' numbers
            traceback.print_exc()
            shapes[name] = {"error": failure(exc)}

    # The Spark UDF path, once, on the first shape measured (it needs a saved checkpoint for the workers).
    spark_shape = next(iter(workloads), None)
    if run.spark != "off" and spark_shape and run.enough(60):
        try:
            udf = spark_udf.spark_udf(workloads[spark_shape])
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            udf = {"error": failure(exc)}
        shapes[spark_shape]["udf"] = udf
        if "tokens_per_s" in udf:
            shapes[spark_shape]["udf_vs_plain"] = udf["tokens_per_s"] / shapes[spark_shape]["fused"]["tokens_per_s"]
        run.log(f"{spark_shape}: Spark UDF {udf}")

    lines = key_values(shapes)
    (run.out / "results.json").write_text(json.dumps({"info": info, "shapes": shapes}, indent=2, default=str))
    (run.out / "results.txt").write_text("".join(f"{k}={v}\n" for k, v in lines))
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
