"""`make bench`: throughput of the scorer on this machine, all ratios from one run.

(a) a plain PyTorch loop (the core Scorer in this process) and (b) the Spark
UDF path over the same documents; (c) two separate passes and (d) the fused
pass, for masked heads starting at several depths; the padding waste of the
token-budget batches. The model is Llama-shaped with random weights, large
enough for compute to dominate on a CPU. Ends with key=value lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--documents", type=int, default=2000)
    p.add_argument("--max-chars", type=int, default=1500, help="characters per document")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--sweep-documents", type=int, default=250, help="documents per fused/two-pass point")
    p.add_argument("--out", default=str(REPO / "bench-output"))
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--skip-spark", action="store_true", help="only the in-process measurements")
    p.add_argument("--task-cpus", type=int, default=os.cpu_count(), help="spark.task.cpus of the UDF run")
    return p.parse_args()


def build_model(args, path: Path) -> None:
    """Random-weight Llama with the fixture tokenizer, saved so every path loads it with from_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "fixtures" / "tiny-llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, max_position_embeddings=max(2048, args.max_seq_len),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def heads_from(layer: int, n_heads: int, count: int = 3) -> list[tuple[int, int]]:
    return [(layer + i // n_heads, i % n_heads) for i in range(count)]


def timed_score(scorer, texts) -> tuple[float, int]:
    started = time.perf_counter()
    docs = scorer.score(texts)
    elapsed = time.perf_counter() - started
    return elapsed, sum(d.n_tokens for d in docs if d.status == "ok")


def spark_udf_run(args, model_path: Path, heads, texts, dtype: str) -> tuple[float, int]:
    from pyspark.sql import functions as F

    from spark_jobs.common import get_spark
    from udfs.influence import ScoringSettings, score_documents

    from spark_jobs.common import LOCAL_PROFILE, read_properties

    # As in conf/spark/gpu.conf, one task holds the executor's compute: here spark.task.cpus =
    # all cores, so the UDF's torch gets the same threads as the plain loop.
    props = dict(read_properties(LOCAL_PROFILE), **{"spark.task.cpus": str(args.task_cpus),
                                                   "spark.ui.showConsoleProgress": "false"})
    conf = Path(args.out) / "bench-spark.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    os.environ["ATTENTION_INFLUENCE_SPARK_CONF"] = str(conf)
    os.environ.setdefault("ATTENTION_INFLUENCE_LOG_LEVEL", "ERROR")
    spark = get_spark("attention-influence-bench")
    frame = spark.createDataFrame([(str(i), t) for i, t in enumerate(texts)], "id STRING, text STRING")
    # Several tasks per core keep both cores busy to the end (a worker keeps its model between tasks).
    frame = frame.repartition(4 * spark.sparkContext.defaultParallelism).cache()
    frame.count()
    settings = ScoringSettings(model=str(model_path), heads=tuple(heads), max_seq_len=args.max_seq_len, dtype=dtype,
                               text_col="text", carry_cols=("id",), batch_tokens=args.batch_tokens)
    started = time.perf_counter()
    rows = score_documents(frame, settings).agg(F.count("*"), F.sum("n_tokens")).first()
    elapsed = time.perf_counter() - started
    assert rows[0] == len(texts)
    return elapsed, int(rows[1])


def main():
    args = parse_args()
    import torch

    from attention_influence.corpus import sample_corpus
    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer

    out = Path(args.out)
    model_path = out / "model"
    build_model(args, model_path)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    texts = [d.text for d in sample_corpus(per_domain=args.documents // 3 + 1, max_chars=args.max_chars)][:args.documents]
    model, tokenizer = load_model(str(model_path), dtype=dtype, device=args.device)
    params = sum(p.numel() for p in model.parameters())
    mid = heads_from(args.layers // 2, args.heads)
    print(f"device={args.device} dtype={dtype} threads={torch.get_num_threads()} model: {args.layers} layers, "
          f"hidden {args.hidden}, {params / 1e6:.1f}M params; {len(texts)} documents; masked heads {mid}")

    results: dict = {"documents": len(texts), "params": params, "device": args.device, "dtype": dtype}
    scorer = Scorer(model, tokenizer, mid, args.max_seq_len, batch_tokens=args.batch_tokens, fused=True)
    scorer.score(texts[:20])  # warm-up: first-call allocations
    scorer.stats.update(real_tokens=0, padded_tokens=0)
    elapsed, tokens = timed_score(scorer, texts)
    results["plain_tokens_per_s"] = tokens / elapsed
    results["padding_waste"] = 1 - scorer.stats["real_tokens"] / scorer.stats["padded_tokens"]
    print(f"(a) plain PyTorch loop: {tokens} tokens in {elapsed:.1f}s = {tokens / elapsed:,.0f} tokens/s; "
          f"padding waste {results['padding_waste']:.3f}")

    if not args.skip_spark:
        elapsed, tokens = spark_udf_run(args, model_path, mid, texts, dtype)
        results["udf_tokens_per_s"] = tokens / elapsed
        print(f"(b) Spark UDF path:     {tokens} tokens in {elapsed:.1f}s = {tokens / elapsed:,.0f} tokens/s "
              f"(incl. worker start and model load)")

    sweep_texts = texts[:args.sweep_documents]
    results["fused_sweep"] = {}
    for first_layer in sorted({0, args.layers // 4, args.layers // 2, 3 * args.layers // 4, args.layers - 1}):
        heads = heads_from(first_layer, args.heads, count=min(3, (args.layers - first_layer) * args.heads))
        speeds = {}
        for fused in (False, True):
            variant = Scorer(model, tokenizer, heads, args.max_seq_len, batch_tokens=args.batch_tokens, fused=fused)
            elapsed, tokens = timed_score(variant, sweep_texts)
            speeds[fused] = tokens / elapsed
        ratio = speeds[True] / speeds[False]
        predicted = 2 * args.layers / (2 * args.layers - first_layer)
        results["fused_sweep"][first_layer] = {"two_pass": speeds[False], "fused": speeds[True], "ratio": ratio,
                                               "layers_only_prediction": predicted}
        print(f"(c/d) masked heads from layer {first_layer}/{args.layers}: two-pass {speeds[False]:,.0f} "
              f"tokens/s, fused {speeds[True]:,.0f} tokens/s, ratio {ratio:.2f} "
              f"(decoder layers alone predict {predicted:.2f})")

    (out / "results.json").write_text(json.dumps(results, indent=2))
    if "udf_tokens_per_s" in results:
        print(f"udf_vs_plain={results['udf_tokens_per_s'] / results['plain_tokens_per_s']:.3f}")
    print(f"fused_vs_two_pass={results['fused_sweep'][args.layers // 2]['ratio']:.3f}")
    print(f"padding_waste={results['padding_waste']:.3f}")
    print(f"plain_tokens_per_s={results['plain_tokens_per_s']:.0f}")


if __name__ == "__main__":
    main()
