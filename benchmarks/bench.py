"""`make bench`: throughput of the scorer on this machine, all ratios from one run.

(a) a plain PyTorch loop (the core Scorer in this process) and (b) the Spark
UDF path over the same documents; (c) two separate passes and (d) the fused
pass, for masked heads starting at several depths; the padding waste of the
token-budget batches. The model is Llama-shaped with random weights, large
enough for compute to dominate on a CPU. Ends with key=value lines.

Every compared pair of paths runs alternately in this process, A B A B ...
(`--pairs` times): a ratio line is the median of the pairs' ratios, with its
`_min` and `_max` beside it, so a burst of other load on a shared machine moves
one pair, not the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="A B runs of each compared pair of paths (median printed)")
    p.add_argument("--documents", type=int, default=800, help="documents of each plain / UDF run")
    p.add_argument("--max-chars", type=int, default=1500, help="characters per document")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--sweep-documents", type=int, default=60, help="documents per fused/two-pass run")
    p.add_argument("--out", default=str(REPO / "bench-output"))
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--skip-spark", action="store_true", help="only the in-process measurements")
    p.add_argument("--task-cpus", type=int, default=os.cpu_count(), help="spark.task.cpus of the UDF run")
    p.add_argument("--real-model", default=os.environ.get("ATTENTION_INFLUENCE_REAL_MODEL",
                                                           str(REPO / "models" / "smollm2-135m-instruct")),
                   help="a real checkpoint (SmolLM2-135M from `make model`) for the real_* lines; '' skips them")
    p.add_argument("--real-documents", type=int, default=16)
    p.add_argument("--real-max-chars", type=int, default=1500)
    p.add_argument("--real-max-seq-len", type=int, default=256)
    p.add_argument("--real-batch-tokens", type=int, default=0,
                   help="0: the fastest fused batch_tokens of --real-batch-sweep (used for every real-model run)")
    p.add_argument("--real-batch-sweep", default="512,1024,2048,4096")
    p.add_argument("--only-real", action="store_true", help="only the real-model measurements")
    p.add_argument("--compile", action="store_true",
                   help="also compiled vs eager decoder layers on the real model (fused; real_compiled_vs_eager)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--masking", default=None, help="masking mode (default: the library's DEFAULT_MASKING where "
                                                   "the scorer takes one; zero-output otherwise)")
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


def timed_score(scorer, texts) -> dict:
    """One run of `scorer` over `texts`: tokens, wall seconds, process CPU seconds (robust to other load)."""
    started, cpu = time.perf_counter(), time.process_time()
    docs = scorer.score(texts)
    return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "tokens": sum(d.n_tokens for d in docs if d.status == "ok")}


def alternate(run_a, run_b, pairs: int) -> dict:
    """Run A, B, A, B, ... `pairs` times each; per pair the speed ratio A/B (and the CPU-time ratio B/A,
    same tokens), summarised by the median and the min and max. Each run returns `timed_score`'s dict."""
    runs = []
    for _ in range(pairs):
        runs.append((run_a(), run_b()))
    ratios = [(a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"]) for a, b in runs]
    cpu = [(b["cpu_s"] / b["tokens"]) / (a["cpu_s"] / a["tokens"]) for a, b in runs if a["cpu_s"] and b["cpu_s"]]
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratios": ratios, "cpu_time_ratio": statistics.median(cpu) if cpu else None,
            "a_tokens_per_s": statistics.median(a["tokens"] / a["seconds"] for a, _ in runs),
            "b_tokens_per_s": statistics.median(b["tokens"] / b["seconds"] for _, b in runs),
            "tokens": runs[0][0]["tokens"], "b_tokens": runs[0][1]["tokens"]}


def pairs_text(pair: dict) -> str:
    return (f"median {pair['ratio']:.3f} (min {pair['ratio_min']:.3f}, max {pair['ratio_max']:.3f}, "
            f"{len(pair['ratios'])} A B pairs)")


def spark_session(args):
    from spark_jobs.local_profile import LOCAL_PROFILE, read_properties
    from spark_jobs.session import get_spark

    # As in conf/spark/gpu.conf, one task holds the executor's compute: here spark.task.cpus =
    # all cores, so the UDF's torch gets the same threads as the plain loop.
    props = dict(read_properties(LOCAL_PROFILE), **{"spark.task.cpus": str(args.task_cpus),
                                                   "spark.ui.showConsoleProgress": "false"})
    conf = Path(args.out) / "bench-spark.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    os.environ["ATTENTION_INFLUENCE_SPARK_CONF"] = str(conf)
    os.environ.setdefault("ATTENTION_INFLUENCE_LOG_LEVEL", "ERROR")
    return get_spark("attention-influence-bench")


def process_tree_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of `pid`, of its live descendants) from /proc: where a Spark job's cores went."""
    tick = os.sysconf("SC_CLK_TCK")

    def stat(p):
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            return None
        fields = text[text.rindex(")") + 2:].split()
        return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick  # ppid, utime + stime

    stats = {int(d): stat(d) for d in os.listdir("/proc") if d.isdigit()}
    stats = {p: v for p, v in stats.items() if v is not None}
    children: dict[int, list[int]] = {}
    for p, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    descendants, todo = 0.0, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        descendants += stats[p][1]
        todo += children.get(p, [])
    return stats.get(pid, (0, 0.0))[1], descendants


class UdfRuns:
    """The Spark UDF path over `texts`, ready to run several times: the session, a one-row warm-up job
    that starts the Python worker and loads the model (a reused worker keeps it, as the plain loop loads
    its model before its clock starts; `warm_up_s`), the documents cached. Each call is one timed job."""

    def __init__(self, args, model_path: Path, heads, texts, dtype: str, max_seq_len: int, batch_tokens: int,
                 partitions: int):
        from udfs.influence import ScoringSettings, score_documents

        self.spark = spark = spark_session(args)
        masking = ({"masking": args.masking} if args.masking and "masking" in ScoringSettings.__dataclass_fields__
                   else {})
        self.settings = ScoringSettings(model=str(model_path), heads=tuple(heads), max_seq_len=max_seq_len,
                                        dtype=dtype, text_col="text", carry_cols=("id",), batch_tokens=batch_tokens,
                                        **masking)
        started = time.perf_counter()
        score_documents(spark.createDataFrame([("w", texts[0])], "id STRING, text STRING"), self.settings).count()
        self.warm_up_s = time.perf_counter() - started
        self.frame = spark.createDataFrame([(str(i), t) for i, t in enumerate(texts)], "id STRING, text STRING")
        self.frame = self.frame.repartition(partitions).cache()
        self.rows = self.frame.count()
        self.jvm = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
        self.cpu = {"jvm_s": 0.0, "python_workers_s": 0.0, "core_s": 0.0}

    def __call__(self) -> dict:
        from pyspark.sql import functions as F

        from udfs.influence import score_documents

        before = process_tree_cpu(self.jvm)
        started = time.perf_counter()
        rows = score_documents(self.frame, self.settings).agg(F.count("*"), F.sum("n_tokens")).first()
        elapsed = time.perf_counter() - started
        after = process_tree_cpu(self.jvm)
        jvm_s, python_s = after[0] - before[0], after[1] - before[1]
        cores = os.cpu_count() or 1
        print(f"    UDF job: {int(rows[1])} tokens in {elapsed:.1f}s; CPU: JVM {jvm_s:.1f}s, its child processes "
              f"(Python workers) {python_s:.1f}s, of {elapsed * cores:.1f} core-seconds; JVM share "
              f"{jvm_s / (elapsed * cores):.1%}")
        for key, value in (("jvm_s", jvm_s), ("python_workers_s", python_s), ("core_s", elapsed * cores)):
            self.cpu[key] += value
        assert rows[0] == self.rows
        return {"seconds": elapsed, "tokens": int(rows[1]), "cpu_s": 0.0}  # its CPU is in other processes

    def close(self) -> None:
        self.frame.unpersist()


def naive_run(model, tokenizer, texts, heads, max_seq_len: int, masking: str | None) -> dict:
    """The baseline a user would write: per document (per window of max_seq_len), two separate
    `model(input_ids, labels=input_ids)` calls at batch size 1, the second with the heads masked."""
    import torch

    from attention_influence.losses import split_windows
    from attention_influence.masking import mask_heads

    mode = {"mode": masking} if masking else {}
    tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            for window in split_windows(ids, max_seq_len):
                if len(window) >= 2:
                    batch = torch.tensor([window])
                    model(input_ids=batch, labels=batch).loss.item()
                    with mask_heads(model, heads, **mode):
                        model(input_ids=batch, labels=batch).loss.item()
            tokens += len(ids)
    return {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "tokens": tokens}


def real_model_runs(args, results: dict, masking: str | None, scorer_kwargs: dict) -> None:
    """SmolLM2-135M (real weights): plain, UDF, fused vs two-pass with the FLOP prediction, naive."""
    import torch

    from demo.corpus import sample_corpus
    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer, split_windows
    from benchmarks import flops
    from benchmarks.gpu.shapes import SMOLLM2_HEADS

    path = Path(args.real_model)
    model, tokenizer = load_model(str(path), dtype="float32", device="cpu")
    heads = [h for h in SMOLLM2_HEADS if h[0] < model.config.num_hidden_layers]
    shape = flops.Shape.of(model.config)
    # Every third document of the sample corpus, so all three domains are in a small set.
    texts = [d.text for d in sample_corpus(per_domain=args.real_documents, max_chars=args.real_max_chars)]
    texts = texts[::3][:args.real_documents]
    lengths = [len(w) for t in texts for w in split_windows(tokenizer(t)["input_ids"], args.real_max_seq_len)]
    context = flops.mean_context(lengths)
    first = min(layer for layer, _ in heads)
    predicted = flops.predicted_fused_ratio(shape, first, context)
    print(f"real model {path.name}: {shape}, {len(texts)} documents, {sum(lengths)} tokens, max_seq_len "
          f"{args.real_max_seq_len}, masked heads (fixed list, no detection run) {heads}")
    batch_tokens = args.real_batch_tokens
    if not batch_tokens:  # on a CPU, small batches stay in cache: measure rather than assume a GPU-sized default
        sweep = {}
        for candidate in [int(x) for x in args.real_batch_sweep.split(",")]:
            scorer = Scorer(model, tokenizer, heads, args.real_max_seq_len, batch_tokens=candidate, fused=True,
                            **scorer_kwargs)
            scorer.score(texts[:1])
            run = timed_score(scorer, texts)
            sweep[candidate] = run["tokens"] / run["seconds"]
        batch_tokens = max(sweep, key=sweep.get)
        results["real_batch_sweep"] = sweep
        print("(real) fused tokens/s by batch_tokens: " + ", ".join(f"{k}: {v:,.0f}" for k, v in sweep.items())
              + f"; using {batch_tokens}")
    scorers = {fused: Scorer(model, tokenizer, heads, args.real_max_seq_len, batch_tokens=batch_tokens, fused=fused,
                             **scorer_kwargs) for fused in (True, False)}
    for scorer in scorers.values():
        scorer.score(texts[:1])  # warm-up
    fused_pair = alternate(lambda: timed_score(scorers[True], texts), lambda: timed_score(scorers[False], texts),
                           args.pairs)
    print(f"(real) fused {fused_pair['a_tokens_per_s']:,.1f} tokens/s, two-pass {fused_pair['b_tokens_per_s']:,.1f} "
          f"tokens/s ({fused_pair['tokens']} tokens a run, medians); fused vs two-pass {pairs_text(fused_pair)} "
          f"(FLOP model predicts {predicted:.3f}: masked heads from layer {first}/{shape.layers}, LM head "
          f"{shape.vocab}x{shape.hidden} twice in both)")
    naive_pair = alternate(lambda: timed_score(scorers[True], texts),
                           lambda: naive_run(model, tokenizer, texts, heads, args.real_max_seq_len, masking),
                           args.pairs)
    print(f"(real) naive, two model(ids, labels=ids) calls per window at batch size 1: "
          f"{naive_pair['b_tokens_per_s']:,.1f} tokens/s; fused vs naive {pairs_text(naive_pair)}")
    compiled_pair = None
    if args.compile:  # whether Scorer(compile_mode="default") should be the CPU default (it is off)
        from attention_influence.compiling import compile_layers, uncompile_layers

        def run(compiled: bool):  # the same scorer; compiling wraps the model's layers, uncompiling unwraps
            compile_layers(model) if compiled else uncompile_layers(model)
            return timed_score(scorers[True], texts)

        started = time.perf_counter()
        run(True)  # compiles (dynamic shapes, cached by code object: re-wrapping later compiles nothing)
        print(f"(real) compiling the decoder layers + a first run: {time.perf_counter() - started:.1f}s")
        compiled_pair = alternate(lambda: run(True), lambda: run(False), args.pairs)
        uncompile_layers(model)
        print(f"(real) compiled layers {compiled_pair['a_tokens_per_s']:,.1f} tokens/s; compiled vs eager "
              f"{pairs_text(compiled_pair)}, by CPU time {compiled_pair['cpu_time_ratio']:.3f}")
    print(f"(real) by process CPU time (less sensitive to other load), medians: fused vs two-pass "
          f"{fused_pair['cpu_time_ratio']:.3f}, fused vs naive {naive_pair['cpu_time_ratio']:.3f}")
    results["real"] = {"model": str(path), "documents": len(texts), "tokens": sum(lengths), "heads": heads,
                       "batch_tokens": batch_tokens, "plain_tokens_per_s": fused_pair["a_tokens_per_s"],
                       "two_pass_tokens_per_s": fused_pair["b_tokens_per_s"],
                       "naive_tokens_per_s": naive_pair["b_tokens_per_s"], "fused_vs_two_pass": fused_pair,
                       "predicted_fused_vs_two_pass": predicted, "vs_naive": naive_pair, "mean_context": context}
    if compiled_pair:
        results["real"]["compiled_vs_eager"] = compiled_pair
    if not args.skip_spark:
        del model, scorers
        udf = UdfRuns(args, path, heads, texts, "float32", args.real_max_seq_len, batch_tokens, partitions=2)
        run = udf()
        udf.close()
        results["real"]["udf_tokens_per_s"] = run["tokens"] / run["seconds"]
        results["real"]["udf_start_s"] = udf.warm_up_s
        print(f"(real) Spark UDF path: {run['tokens']} tokens in {run['seconds']:.1f}s = "
              f"{run['tokens'] / run['seconds']:,.1f} tokens/s (worker start + model load before it: "
              f"{udf.warm_up_s:.1f}s)")


def ratio_lines(key: str, pair: dict) -> list[tuple[str, float]]:
    """`key` = the median of the pairs, with its min and max beside it."""
    return [(key, pair["ratio"]), (f"{key}_min", pair["ratio_min"]), (f"{key}_max", pair["ratio_max"])]


def main():
    args = parse_args()
    import torch

    from demo.corpus import sample_corpus
    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer
    from attention_influence.masking import DEFAULT_MASKING

    # The masking mode travels where the scorer takes one (the masking work adds it); this core masks
    # with zero-output only. Both modes cost the same FLOPs.
    takes_masking = "masking" in Scorer.__dataclass_fields__
    masking = (args.masking or DEFAULT_MASKING) if takes_masking else None
    args.masking = masking
    kwargs = {"masking": masking} if masking else {}

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only_real:
        results: dict = {"masking": masking or "zero-output", "load_average_start": os.getloadavg()}
        print(f"threads={torch.get_num_threads()} masking={masking or 'zero-output'} load: {os.getloadavg()[0]:.1f}")
        real_model_runs(args, results, masking, kwargs)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print_lines(real_lines(results["real"]) + [("load_average", os.getloadavg()[0])])
        return
    model_path = out / "model"
    build_model(args, model_path)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    texts = [d.text for d in sample_corpus(per_domain=args.documents // 3 + 1, max_chars=args.max_chars)][:args.documents]
    model, tokenizer = load_model(str(model_path), dtype=dtype, device=args.device)
    params = sum(p.numel() for p in model.parameters())
    mid = heads_from(args.layers // 2, args.heads)
    print(f"device={args.device} dtype={dtype} threads={torch.get_num_threads()} masking={masking or 'zero-output'} "
          f"model: {args.layers} layers, hidden {args.hidden}, {params / 1e6:.1f}M params; {len(texts)} documents; "
          f"masked heads {mid}; {args.pairs} A B pairs per ratio; load: {os.getloadavg()[0]:.1f} (1-min load "
          f"average; other work on these cores makes timings noisy)")

    results: dict = {"documents": len(texts), "params": params, "device": args.device, "dtype": dtype,
                     "masking": masking or "zero-output", "pairs": args.pairs, "load_average_start": os.getloadavg()}
    scorer = Scorer(model, tokenizer, mid, args.max_seq_len, batch_tokens=args.batch_tokens, fused=True, **kwargs)
    scorer.score(texts[:20])  # warm-up: first-call allocations
    scorer.stats.update(real_tokens=0, padded_tokens=0)

    def plain():
        return timed_score(scorer, texts)

    if args.skip_spark:
        runs = [plain() for _ in range(args.pairs)]
        results["plain_tokens_per_s"] = statistics.median(r["tokens"] / r["seconds"] for r in runs)
    else:
        udf = UdfRuns(args, model_path, mid, texts, dtype, args.max_seq_len, args.batch_tokens,
                      partitions=4 * (os.cpu_count() or 1))
        pair = alternate(udf, plain, args.pairs)
        udf.close()
        results.update(plain_tokens_per_s=pair["b_tokens_per_s"], udf_tokens_per_s=pair["a_tokens_per_s"],
                       udf_vs_plain=pair, udf_start_s=udf.warm_up_s, udf_cpu=udf.cpu)
        print(f"(b) Spark UDF path: {pair['a_tokens_per_s']:,.0f} tokens/s (median; worker start + model load "
              f"before it, as for (a): {udf.warm_up_s:.1f}s); UDF vs plain {pairs_text(pair)}")
    results["padding_waste"] = 1 - scorer.stats["real_tokens"] / scorer.stats["padded_tokens"]
    print(f"(a) plain PyTorch loop: {results['plain_tokens_per_s']:,.0f} tokens/s (median); "
          f"padding waste {results['padding_waste']:.3f}")

    from benchmarks import flops

    shape = flops.Shape.of(model.config)
    sweep_texts = texts[:args.sweep_documents]
    results["fused_sweep"] = {}
    for first_layer in sorted({args.layers // 4, args.layers // 2, 3 * args.layers // 4}):
        heads = heads_from(first_layer, args.heads, count=min(3, (args.layers - first_layer) * args.heads))
        variants = {fused: Scorer(model, tokenizer, heads, args.max_seq_len, batch_tokens=args.batch_tokens,
                                  fused=fused, **kwargs) for fused in (True, False)}
        pair = alternate(lambda: timed_score(variants[True], sweep_texts),
                         lambda: timed_score(variants[False], sweep_texts), args.pairs)
        predicted = flops.predicted_fused_ratio(shape, first_layer, args.max_seq_len / 2)
        results["fused_sweep"][first_layer] = {**pair, "two_pass": pair["b_tokens_per_s"],
                                               "fused": pair["a_tokens_per_s"], "flop_prediction": predicted}
        print(f"(c/d) masked heads from layer {first_layer}/{args.layers}: two-pass {pair['b_tokens_per_s']:,.0f} "
              f"tokens/s, fused {pair['a_tokens_per_s']:,.0f} tokens/s; fused vs two-pass {pairs_text(pair)} "
              f"(FLOP model predicts {predicted:.2f})")
    del model

    if args.real_model and (Path(args.real_model) / "config.json").exists():
        real_model_runs(args, results, masking, kwargs)
    elif args.real_model:
        print(f"real model: {args.real_model} not found (run `make model`); real_* lines skipped")

    results["load_average_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = []
    if "udf_vs_plain" in results:
        lines += ratio_lines("udf_vs_plain", results["udf_vs_plain"])
        cpu = results["udf_cpu"]
        lines += [("udf_jvm_cpu_share", cpu["jvm_s"] / cpu["core_s"]),
                  ("udf_python_cpu_share", cpu["python_workers_s"] / cpu["core_s"])]
    mid_point = results["fused_sweep"][args.layers // 2]
    lines += ratio_lines("fused_vs_two_pass", mid_point) + [("fused_vs_two_pass_predicted", mid_point["flop_prediction"])]
    if results.get("real"):
        lines += real_lines(results["real"])
    lines += [("padding_waste", results["padding_waste"]), ("plain_tokens_per_s", results["plain_tokens_per_s"])]
    if "udf_tokens_per_s" in results:
        lines.append(("udf_tokens_per_s", results["udf_tokens_per_s"]))
    lines.append(("load_average", results["load_average_end"][0]))
    print_lines(lines)


def real_lines(real: dict) -> list[tuple[str, float]]:
    fused, naive = real["fused_vs_two_pass"], real["vs_naive"]
    lines = ratio_lines("real_fused_vs_two_pass", fused)
    lines += [("real_fused_vs_two_pass_predicted", real["predicted_fused_vs_two_pass"])]
    lines += ratio_lines("real_vs_naive", naive)
    # real_vs_naive = fused_vs_two_pass x this: what batching by tokens alone gains over batch size 1
    lines += [("real_two_pass_vs_naive", real["two_pass_tokens_per_s"] / real["naive_tokens_per_s"])]
    if fused["cpu_time_ratio"] and naive["cpu_time_ratio"]:
        lines += [("real_fused_vs_two_pass_cpu_time", fused["cpu_time_ratio"]),
                  ("real_vs_naive_cpu_time", naive["cpu_time_ratio"])]
    if "compiled_vs_eager" in real:
        lines += ratio_lines("real_compiled_vs_eager", real["compiled_vs_eager"])
    if "udf_tokens_per_s" in real:
        lines.append(("real_udf_vs_plain", real["udf_tokens_per_s"] / real["plain_tokens_per_s"]))
    lines += [("real_batch_tokens", real["batch_tokens"]), ("real_plain_tokens_per_s", real["plain_tokens_per_s"]),
              ("real_naive_tokens_per_s", real["naive_tokens_per_s"])]
    if "udf_tokens_per_s" in real:
        lines.append(("real_udf_tokens_per_s", real["udf_tokens_per_s"]))
    return lines


def print_lines(lines: list[tuple[str, float]]) -> None:
    for key, value in lines:
        print(f"{key}={value:.3f}" if abs(value) < 100 else f"{key}={value:.0f}")


if __name__ == "__main__":
    main()
