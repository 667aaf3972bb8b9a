"""Where `make bench`'s UDF job spends the Python worker's time: py-spy on the worker, one job.

    python benchmarks/profile_udf.py [--pairs 1]   # the same model, documents and Spark settings as bench.py

Builds bench.py's synthetic model and 800 documents, runs its UDF path (8 tasks) once with
`py-spy record --idle --threads` attached to the reused Python worker, and the plain loop once,
then prints where the worker's main thread was: the model, waiting for the JVM, reading / writing
Arrow, our code around the model, the rest. Also each path's CPU share of the cores.
Needs py-spy (`pip install -e '.[bench]'`). Writes bench-output/profile-udf/.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Buckets of a sample's stack (py-spy raw: outermost frame first, "Function (file:line)"), first match wins.
BUCKETS = [
    ("model forward (Scorer._run and below)", lambda frames: any(f.startswith("Scorer._run (") for f in frames)),
    ("tokenizing", lambda frames: any(f.startswith("Scorer.tokenize (") for f in frames)),
    ("waiting for the JVM (socket read)", lambda frames: any(n in frames[-1] for n in ("read_int", "readinto", "read ("))),
    ("Arrow in/out (pyspark serializers, pyarrow)", lambda frames: any("serializers.py" in f or "pyarrow" in f
                                                                        for f in frames)),
    ("our code around the model (udfs/, attention_influence/)", lambda frames: any(
        "udfs/influence.py" in f or "attention_influence/" in f for f in frames)),
]


def worker_pids(jvm_pid: int) -> list[int]:
    """Python worker processes under the JVM: children of pyspark's daemon."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    rows = [(int(p), int(pp), " ".join(a)) for p, pp, *a in (line.split(None, 2) for line in out)]
    daemons = {p for p, pp, a in rows if pp == jvm_pid and "pyspark.daemon" in a}
    return [p for p, pp, _ in rows if pp in daemons]


def bucket_of(stack: str) -> str:
    frames = stack.split(";")[1:]  # the first entry names the thread
    for name, test in BUCKETS:
        if frames and test(frames):
            return name
    return "other"


def summarise(raws: dict) -> None:
    """Per worker thread, the share of its samples in each bucket."""
    by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for pid, raw in raws.items():
        if not Path(raw).exists():
            continue
        for line in Path(raw).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                by_thread[f"{pid} {stack.split(';')[0]}"][bucket_of(stack)] += int(count)
    for thread, totals in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(totals.values())
        if total < 50:  # the short-lived prefetch threads (one per pool): a handful of samples each
            continue
        print(f"worker {thread}: {total} samples at 50 Hz (py-spy --idle)")
        for name, count in totals.most_common():
            print(f"  {count / total:6.1%}  {name}")


def main():
    import bench  # noqa: E402 - benchmarks/ is on the path when run as a script

    args = bench.parse_args()
    out = Path(args.out) / "profile-udf"
    out.mkdir(parents=True, exist_ok=True)
    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer
    from demo.corpus import sample_corpus

    model_path = Path(args.out) / "model"
    if not (model_path / "config.json").exists():
        bench.build_model(args, model_path)
    texts = [d.text for d in sample_corpus(per_domain=args.documents // 3 + 1, max_chars=args.max_chars)][:args.documents]
    heads = bench.heads_from(args.layers // 2, args.heads)
    udf = bench.UdfRuns(args, model_path, heads, texts, "float32", args.max_seq_len, args.batch_tokens,
                        partitions=4 * (os.cpu_count() or 1))
    pids = worker_pids(udf.jvm)
    if not pids:
        raise SystemExit("no Python worker under the JVM after the warm-up job")
    spies = {}
    for pid in pids:  # every live worker: the job runs on whichever the daemon hands its tasks
        raw = out / f"worker-{pid}.txt"
        spies[pid] = (raw, subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--idle",
                                             "--threads", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(raw),
                                             "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(2)
    job = udf()
    for _, spy in spies.values():
        spy.send_signal(signal.SIGINT)
    for _, spy in spies.values():
        spy.wait(timeout=60)
    cpu = udf.cpu
    udf.close()

    model, tokenizer = load_model(str(model_path), dtype="float32", device="cpu")
    scorer = Scorer(model, tokenizer, heads, args.max_seq_len, batch_tokens=args.batch_tokens, fused=True,
                    masking=args.masking or "uniform")
    scorer.score(texts[:20])
    plain = bench.timed_score(scorer, texts)
    cores = os.cpu_count() or 1

    print(f"UDF job: {job['tokens']} tokens in {job['seconds']:.1f}s = {job['tokens'] / job['seconds']:,.0f} tokens/s; "
          f"Python workers {cpu['python_workers_s'] / cpu['core_s']:.1%} of the core-seconds, JVM "
          f"{cpu['jvm_s'] / cpu['core_s']:.1%}")
    print(f"plain loop: {plain['tokens']} tokens in {plain['seconds']:.1f}s = {plain['tokens'] / plain['seconds']:,.0f} "
          f"tokens/s; its process {plain['cpu_s'] / (plain['seconds'] * cores):.1%} of the core-seconds")
    summarise({pid: raw for pid, (raw, _) in spies.items()})
    print(f"raw stacks: {out}/worker-*.txt")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "benchmarks"))
    if sys.argv[1:2] == ["--summarise"]:  # --summarise worker-<pid>.txt ...: the raw files of an earlier run
        summarise({Path(f).stem.split("-")[-1]: f for f in sys.argv[2:]})
    else:
        main()
