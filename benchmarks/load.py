"""Load test (issue 8 §4): score 2,000 and 20,000 short documents with the fixture model, on
local Spark and on the local standalone cluster (scripts/cluster.sh), each run as users run it
(`python spark_jobs/score.py`, `spark-submit ... spark_jobs/score.py`), and report per run:
wall time, the job's scoring time, documents/s per core, and the peak resident memory of the
driver (its JVM + Python) and of one worker's executor (JVM + Python workers), sampled from /proc.

    python benchmarks/load.py [--sizes 2000,20000] [--modes local,cluster] [--out bench-output/load]

The documents are generated and written by Spark (no document ever passes through the driver);
the job itself never collects documents either (only per-status counts). Ends with key=value lines.
Numbers taken while other processes use the CPU are noisy: the script prints `uptime` with them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

WORDS = ("the data model reads every token of a short document and predicts the next one while "
         "retrieval heads copy spans from context into the answer so the loss rises when they are masked "
         "open file return stream raise error upon failure permission granted free charge software").split()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,20000")
    p.add_argument("--modes", default="local,cluster")
    p.add_argument("--out", default=str(REPO / "bench-output" / "load"))
    p.add_argument("--docs-per-partition", type=int, default=500)
    p.add_argument("--master-port", type=int, default=7077, help="port of the cluster this script starts")
    return p.parse_args()


def make_corpus(spark, n: int, path: Path) -> None:
    """n documents of 8-20 words, built by Spark SQL expressions on the executors."""
    from pyspark.sql import functions as F

    words = F.array(*[F.lit(w) for w in WORDS])
    word = lambda x: F.element_at(words, (F.pmod(F.hash(F.col("n"), x), F.lit(len(WORDS))) + 1).cast("int"))
    (spark.range(n).withColumnRenamed("id", "n")
     .withColumn("id", F.format_string("doc-%07d", F.col("n")))
     .withColumn("domain", F.element_at(F.array(F.lit("code"), F.lit("prose"), F.lit("legal")),
                                        (F.col("n") % 3 + 1).cast("int")))
     .withColumn("text", F.concat_ws(" ", F.transform(F.sequence(F.lit(1), (F.col("n") % 13 + 8).cast("int")), word)))
     .drop("n").write.format("delta").mode("overwrite").save(str(path)))


class PeakRss:
    """Peak summed RSS of process groups, sampled every 0.25 s from /proc (psutil)."""

    def __init__(self, groups):
        self.groups, self.peaks, self._stop = groups, {name: 0 for name in groups}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            for name, select in self.groups.items():
                total = 0
                for proc in select():
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
                self.peaks[name] = max(self.peaks[name], total)
            self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tree(pid: int):
    import psutil

    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.Error:
        return []


def is_python_worker(proc) -> bool:
    try:
        return "pyspark.daemon" in " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001
        return False


def executor_of(work_dir: Path):
    """Worker 1's executor JVM and its Python workers."""
    import psutil

    def select():
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "CoarseGrainedExecutorBackend" in " ".join(proc.info["cmdline"] or []) and \
                        Path(proc.cwd()).resolve().is_relative_to(work_dir.resolve()):
                    return tree(proc.pid)
            except (psutil.Error, OSError):
                continue
        return []
    return select


def run_job(mode: str, n: int, corpus: Path, out: Path, heads: Path, cluster_dir: Path, partitions: int,
            master_port: int) -> dict:
    output = out / f"scored-{mode}-{n}"
    shutil.rmtree(output, ignore_errors=True)
    job = [str(REPO / "spark_jobs" / "score.py"), "--input", str(corpus), "--output", str(output),
           "--model", str(REPO / "fixtures" / "tiny-llama"), "--heads", str(heads), "--max-seq-len", "64",
           "--partitions", str(partitions), "--mode", "overwrite"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SPARK_LOCAL_IP="127.0.0.1", ATTENTION_INFLUENCE_LOG_LEVEL="ERROR")
    if mode == "local":
        conf = out / "local-bench.conf"
        conf.write_text((REPO / "conf" / "spark" / "local.conf").read_text()
                        + "\nspark.master local[2]\nspark.ui.enabled false\nspark.ui.showConsoleProgress false\n")
        env["ATTENTION_INFLUENCE_SPARK_CONF"] = str(conf)
        env["PYTHONPATH"] = str(REPO)  # local Python workers import this checkout (the cluster gets the zip)
        command, cores = [sys.executable] + job, 2
    else:
        zip_path = out / "attention_influence_jobs.zip"
        with zipfile.ZipFile(zip_path, "w") as z:
            for folder in ("attention_influence", "demo", "udfs", "spark_jobs"):
                for p in sorted((REPO / folder).rglob("*")):
                    if "__pycache__" not in p.parts:
                        z.write(p, p.relative_to(REPO))
        spark_home = Path(__import__("pyspark").__file__).parent
        command = [str(spark_home / "bin" / "spark-submit"), "--master", f"spark://127.0.0.1:{master_port}",
                   "--properties-file",
                   str(REPO / "conf" / "spark" / "standalone.conf"), "--py-files", str(zip_path)] + job
        cores = 2  # two workers x one core
    started = time.time()
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    groups = {"driver": lambda: [p for p in tree(process.pid) if not is_python_worker(p)]}
    if mode == "local":
        groups["worker"] = lambda: [p for p in tree(process.pid) if is_python_worker(p)]
    else:
        groups["worker"] = executor_of(cluster_dir / "work1")
    with PeakRss(groups) as rss:
        log, _ = process.communicate(timeout=3600)
    wall = time.time() - started
    if process.returncode != 0:
        raise SystemExit(f"{mode} {n}: score.py failed ({process.returncode}):\n{log[-3000:]}")
    match = re.search(r"scored (\d+) documents \((\d+) tokens\) in ([\d.]+)s", log)
    documents, tokens, scoring = int(match[1]), int(match[2]), float(match[3])
    return {"mode": mode, "documents": documents, "tokens": tokens, "wall_s": wall, "scoring_s": scoring,
            "docs_per_core_s": documents / scoring / cores, "tokens_per_core_s": tokens / scoring / cores,
            "driver_peak_rss_mb": rss.peaks["driver"] / 2**20, "worker_peak_rss_mb": rss.peaks["worker"] / 2**20}


def main():
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    heads = out / "heads.json"
    heads.write_text('{"model": "tiny-llama", "heads": [[1, 0], [1, 5]], "scores": {}}')

    from spark_jobs.session import get_spark

    spark = get_spark("attention-influence-load-corpus")
    for n in sizes:
        make_corpus(spark, n, out / f"corpus-{n}")
    spark.stop()

    cluster_dir = out / "cluster"
    cluster_env = dict(os.environ, PY=sys.executable, CLUSTER_DIR=str(cluster_dir),
                       CLUSTER_MASTER_PORT=str(args.master_port), CLUSTER_UI_PORT=str(args.master_port + 1003))
    if "cluster" in modes:
        subprocess.run([str(REPO / "scripts" / "cluster.sh"), "start"], env=cluster_env, check=True)
    results = []
    try:
        for mode in modes:
            for n in sizes:
                uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                result = run_job(mode, n, out / f"corpus-{n}", out, heads, cluster_dir,
                                 max(2, n // args.docs_per_partition), args.master_port)
                result["load_before"] = uptime.split("load average:")[-1].strip()
                results.append(result)
                print(f"{mode:8s} {n:6d} docs: wall {result['wall_s']:6.1f}s, scoring {result['scoring_s']:6.1f}s, "
                      f"{result['docs_per_core_s']:6.1f} docs/s/core ({result['tokens_per_core_s']:6.0f} tokens/s/core), "
                      f"driver peak RSS {result['driver_peak_rss_mb']:5.0f} MB, worker peak RSS "
                      f"{result['worker_peak_rss_mb']:5.0f} MB; load average before: {result['load_before']}",
                      flush=True)
    finally:
        if "cluster" in modes:
            subprocess.run([str(REPO / "scripts" / "cluster.sh"), "stop"], env=cluster_env)
    by = {(r["mode"], r["documents"]): r for r in results}
    small, large = min(sizes), max(sizes)
    for mode in modes:
        if (mode, small) in by and (mode, large) in by:
            ratio = by[(mode, large)]["docs_per_core_s"] / by[(mode, small)]["docs_per_core_s"]
            print(f"{mode}_throughput_per_core_{large}_vs_{small}={ratio:.2f}")
            print(f"{mode}_driver_peak_rss_mb_{large}={by[(mode, large)]['driver_peak_rss_mb']:.0f}")
            print(f"{mode}_worker_peak_rss_mb_{large}={by[(mode, large)]['worker_peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
