"""What committing in slices costs (`make bench`, after bench.py): the same documents scored by score.py
once in one slice and once in slices of about a minute of work, same model, same session, one run
after the other (one-shot, sliced, and again when --repeats > 1); ends with key=value lines:

    sliced_vs_oneshot   throughput (tokens/s over the whole run) of the sliced run / the one-shot run
    slice_documents     the slice size it used; slices: how many
    overhead_per_slice_s  (sliced seconds - one-shot seconds) / (slices - 1): what a slice boundary costs
    sliced_files / oneshot_files  data files of each output table at the end (the sliced run compacts)

The boundary cost is Spark's and Delta's work (anti-join, MERGE, stream planning), not the model's,
so a GPU node pays about the same seconds per slice: slices of S seconds of work keep
S / (S + overhead_per_slice_s) of the one-shot throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--documents", type=int, default=225, help="documents of the demo corpus to score")
    p.add_argument("--slice-documents", type=int, default=75, help="about a minute of SmolLM2 work on 2 cores")
    p.add_argument("--max-chars", type=int, default=1000)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1, help="one-shot/sliced pairs, alternating")
    p.add_argument("--out", default=str(REPO / "bench-output" / "slicing"))
    return p.parse_args()


def main():
    args = parse_args()
    from demo.corpus import sample_corpus
    from spark_jobs import score
    from spark_jobs.session import get_spark
    from spark_jobs.tables import table_detail

    if not (Path(args.model) / "config.json").exists():
        print(f"model {args.model} not found (run `make model`); sliced_vs_oneshot skipped")
        return
    os.environ.setdefault("ATTENTION_INFLUENCE_LOG_LEVEL", "ERROR")
    os.environ.setdefault("ATTENTION_INFLUENCE_PROGRESS_SECONDS", "600")
    spark = get_spark("attention-influence-bench-slicing")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=out))
    docs = [(f"doc-{i:04d}", d.domain, d.text)
            for i, d in enumerate(sample_corpus(per_domain=args.documents // 3 + 1, max_chars=args.max_chars))]
    docs = docs[:args.documents]
    # Several input files, so the stream cuts micro-batches by files as on a real table.
    (spark.createDataFrame(docs, "id STRING, domain STRING, text STRING").repartition(6)
     .write.format("delta").save(str(root / "docs")))
    spark.createDataFrame(docs[:8], "id STRING, domain STRING, text STRING").write.format("delta").save(str(root / "warm"))
    heads = root / "heads.json"
    # Six heads in the upper half of the model (SmolLM2's copying heads sit there); any model's shape.
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model)
    layers, per_layer = config.num_hidden_layers, config.num_attention_heads
    chosen = [[layer, head % per_layer] for layer in (layers // 2, layers - 1) for head in range(3)]
    heads.write_text(json.dumps({"model": "bench", "model_revision": None, "top_fraction": 0.05,
                                 "heads": chosen, "scores": {}}))

    def timed(name: str, slice_documents: int, source: str = "docs"):
        options = score.options(input=str(root / source), output=str(root / name), model=args.model,
                                heads=str(heads), max_seq_len=args.max_seq_len, slice_documents=slice_documents)
        started = time.time()
        summary = score.run(spark, options)
        return summary, time.time() - started

    timed("warm-up", 1000, source="warm")  # model load in the Python workers, in neither figure
    pairs = []
    for repeat in range(args.repeats):
        one_shot, one_shot_s = timed(f"one-shot-{repeat}", 10 ** 6)
        sliced, sliced_s = timed(f"sliced-{repeat}", args.slice_documents)
        assert one_shot.documents == sliced.documents == len(docs)
        ratio = (sliced.tokens / sliced_s) / (one_shot.tokens / one_shot_s)
        overhead = (sliced_s - one_shot_s) / max(1, sliced.slices - 1)
        pairs.append((ratio, overhead, sliced.slices, one_shot_s, sliced_s))
        print(f"pair {repeat + 1}: one-shot {one_shot_s:.1f}s ({one_shot.tokens / one_shot_s:.0f} tokens/s), "
              f"sliced {sliced_s:.1f}s in {sliced.slices} slices ({sliced.tokens / sliced_s:.0f} tokens/s): "
              f"{ratio:.3f}, {overhead:.1f}s per slice boundary")
    pairs.sort()
    ratio, overhead, slices, _, sliced_s = pairs[len(pairs) // 2]
    files = {name: table_detail(spark, str(root / f"{name}-0"))["numFiles"] for name in ("one-shot", "sliced")}
    for key, value in [("sliced_vs_oneshot", ratio), ("slice_documents", args.slice_documents),
                       ("slices", slices), ("slice_seconds", sliced_s / slices),
                       ("overhead_per_slice_s", overhead), ("sliced_files", files["sliced"]),
                       ("oneshot_files", files["one-shot"]), ("load_average", os.getloadavg()[0])]:
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
    spark.stop()


if __name__ == "__main__":
    main()
