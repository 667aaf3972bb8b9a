"""How many retrieval prompts, of what length, head detection needs (issue 19 §3; docs/detection-sizing.md).

    python benchmarks/detection_sizing.py --model models/smollm2-135m-instruct \
        --samples 8,32,128 --contexts 1024,2048 --kept demo-output/kept

For each prompt length it scores every head on the largest sample count once and keeps the per-sample
scores: the task's prompts are drawn from one seeded stream, so the first 8 of 128 prompts are exactly
the prompts an 8-sample detection sees, and the mean of the first N per-sample scores is that
detection's result. For each (samples, length) it then measures, against the same held-out yardsticks:

- overlap: the share of the largest run's heads (most samples, longest prompts) it also selects;
- copy gain removed: the share of the model's copy gain on repeated random tokens (first-copy loss
  minus second-copy loss) that masking its heads removes, beside the mean for as many random heads
  (the measure of tests/test_detect_heads_job.py);
- task accuracy: exact answers (greedy) on held-out prompts of the task (another seed), full, with its
  heads masked, and with random heads masked (drawn once, outside the largest run's heads);
- probe share: `spark_jobs/probe.py`'s share of HumanEval solutions in the top 20% by
  `attention_influence` among length-matched code documents of `--kept` (skipped without it).

Writes <out>/results.json, <out>/table.md and one heads JSON per configuration.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--samples", default="8,32,128", help="detection sample counts (comma-separated)")
    p.add_argument("--contexts", default="1024,2048", help="prompt lengths in tokens (comma-separated)")
    p.add_argument("--top-fraction", type=float, default=0.05)
    p.add_argument("--masking", default="uniform")
    p.add_argument("--seed", type=int, default=0, help="detection prompts (the jobs' default seed)")
    p.add_argument("--eval-samples", type=int, default=16, help="held-out prompts for the task accuracies")
    p.add_argument("--eval-context", type=int, default=1024)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--random-draws", type=int, default=3, help="random head sets for the accuracy baseline")
    p.add_argument("--kept", default=str(REPO / "demo-output" / "kept"),
                   help="documents the probes are planted among (make demo's filtered corpus); '' skips the probes")
    p.add_argument("--max-probes", type=int, default=40)
    p.add_argument("--out", default=str(REPO / "bench-output" / "detection-sizing"))
    return p.parse_args(argv)


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def prefix_detections(model, tokenizer, sample_counts, context, args) -> tuple[dict, float]:
    """{samples: (mean scores, selected heads)} from one scoring of max(sample_counts) prompts, and the
    seconds that scoring took."""
    import numpy as np

    from attention_influence.retrieval import retrieval_scores, select_heads
    from attention_influence.retrieval_task import build_samples

    largest = max(sample_counts)
    samples = build_samples(tokenizer, largest, context, seed=args.seed)
    done = [0]

    def progress():
        done[0] += 1
        if done[0] % 8 == 0 or done[0] == largest:
            log(f"  {context} tokens: {done[0]}/{largest} prompts scored")

    started = time.perf_counter()
    result = retrieval_scores(model, tokenizer, samples, progress=progress)
    seconds = time.perf_counter() - started
    out = {}
    for n in sample_counts:
        scores = np.mean(result.sample_scores[:n], axis=0)
        out[n] = (scores, select_heads(scores, args.top_fraction))
    return out, seconds


def probe_share(spark, args, heads_path: Path, scratch: Path) -> dict:
    from spark_jobs import probe

    rows = probe.run(spark, probe.options(input=args.kept, model=args.model, heads=str(heads_path),
                                          output=str(scratch / "report"), probes="humaneval", probe_domain="code",
                                          max_probes=args.max_probes, masking=args.masking))
    row = next(r for r in rows if r["selector"] == "attention_influence")
    return {k: row[k] for k in ("share_in_top", "base_rate", "ci_low", "ci_high", "probes", "controls")}


def main(argv=None):
    args = parse_args(argv)
    import torch

    from attention_influence.loading import load_model
    from attention_influence.retrieval import head_layout, heads_document, task_accuracy
    from attention_influence.retrieval_task import build_samples
    from tests.helpers import copy_gain_removed

    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sample_counts = sorted({int(s) for s in args.samples.split(",")})
    contexts = sorted({int(c) for c in args.contexts.split(",")})
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu", attn_implementation="eager")
    log(f"{args.model}: samples {sample_counts} x contexts {contexts}, torch threads {torch.get_num_threads()}")

    configs, timings = {}, {}
    for context in contexts:
        detections, seconds = prefix_detections(model, tokenizer, sample_counts, context, args)
        timings[context] = seconds / max(sample_counts)
        log(f"{context} tokens: {max(sample_counts)} prompts in {seconds:.0f} s ({timings[context]:.2f} s each)")
        for n, (scores, heads) in detections.items():
            name = f"{n}x{context}"
            path = out / f"heads-{name}.json"
            path.write_text(json.dumps(heads_document(args.model, None, args.top_fraction, heads, scores,
                                                      samples=n, context_tokens=context, masking=args.masking,
                                                      seed=args.seed), indent=2) + "\n")
            configs[name] = {"samples": n, "context_tokens": context, "heads": heads, "heads_json": path.name,
                             "detection_seconds_estimate": round(n * timings[context], 1)}
    reference = f"{max(sample_counts)}x{max(contexts)}"
    reference_heads = set(configs[reference]["heads"])

    eval_samples = build_samples(tokenizer, args.eval_samples, args.eval_context, seed=args.eval_seed)
    accuracy_full = task_accuracy(model, tokenizer, eval_samples)
    n_layers, n_heads, _ = head_layout(model)
    outside = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in reference_heads]
    rng = random.Random(args.seed)
    random_sets = [sorted(rng.sample(outside, len(reference_heads))) for _ in range(args.random_draws)]
    accuracy_random = sum(task_accuracy(model, tokenizer, eval_samples, pick, args.masking)
                          for pick in random_sets) / len(random_sets)
    log(f"held-out task accuracy: full {accuracy_full:.3f}, {len(reference_heads)} random heads masked "
        f"{accuracy_random:.3f} (mean of {len(random_sets)})")

    spark = None
    if args.kept and Path(args.kept).exists():
        from spark_jobs.session import get_spark

        spark = get_spark("attention-influence-detection-sizing")
    for name, config in configs.items():
        heads = config["heads"]
        config["overlap_with_largest"] = len(set(heads) & reference_heads) / len(reference_heads)
        selected, random_mean = copy_gain_removed(model, tokenizer, heads, args.masking)
        config.update(copy_gain_removed=selected, copy_gain_removed_random=random_mean,
                      accuracy_masked=task_accuracy(model, tokenizer, eval_samples, heads, args.masking))
        if spark is not None:
            config["probe"] = probe_share(spark, args, out / config["heads_json"], out / f"probe-{name}")
        log(f"{name}: {json.dumps({k: v for k, v in config.items() if k != 'heads'})}")

    results = {"model": args.model, "masking": args.masking, "top_fraction": args.top_fraction,
               "seconds_per_prompt": timings, "eval": {"samples": args.eval_samples, "context": args.eval_context,
                                                       "seed": args.eval_seed, "accuracy_full": accuracy_full,
                                                       "accuracy_random_masked": accuracy_random},
               "reference": reference, "configs": configs, "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "table.md").write_text(table(results))
    print(table(results))
    if spark is not None:
        spark.stop()


def table(results: dict) -> str:
    lines = ["| samples x tokens | detection (s, est.) | overlap with " + results["reference"]
             + " | copy gain removed (random heads) | held-out accuracy masked | probe share in top 20% (95% CI) |",
             "|---|---|---|---|---|---|"]
    for name, c in results["configs"].items():
        probe = c.get("probe")
        probe_text = (f"{probe['share_in_top']:.3f} ({probe['ci_low']:.2f}-{probe['ci_high']:.2f}), "
                      f"base {probe['base_rate']:.3f}") if probe else "-"
        lines.append(f"| {name} | {c['detection_seconds_estimate']:.0f} | {c['overlap_with_largest']:.2f} | "
                     f"{c['copy_gain_removed']:.2f} ({c['copy_gain_removed_random']:.2f}) | "
                     f"{c['accuracy_masked']:.3f} | {probe_text} |")
    e = results["eval"]
    lines.append(f"\nHeld-out task accuracy ({e['samples']} prompts of {e['context']} tokens, seed {e['seed']}): "
                 f"full {e['accuracy_full']:.3f}, random heads masked {e['accuracy_random_masked']:.3f}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
