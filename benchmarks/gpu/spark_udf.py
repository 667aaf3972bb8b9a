"""The Spark step: tokens/s of the scoring UDF on local Spark, in the session `conf/spark/gpu.conf` describes.

Skipped, with the reason, where pyspark or Java is missing (a bare GPU machine): pyspark is imported
only here and only once both are known to be present.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from benchmarks.gpu.workload import REPO, RunSettings, Workload

GPU_PROFILE = REPO / "conf" / "spark" / "gpu.conf"
# The benchmark reads and writes no tables, and a lent GPU machine cannot reach Maven Central for Delta's jars.
TABLE_PROPERTIES = ("spark.jars.packages", "spark.jars.ivy", "spark.sql.extensions", "spark.sql.catalog.spark_catalog")


def spark_udf(work: Workload) -> dict:
    """Tokens/s of udfs.influence on local Spark; the model is loaded by a warm-up job first (reported apart).
    A shape with random weights is saved for the workers first, and removed after."""
    try:
        import pyspark
    except ImportError:
        return {"skipped": "pyspark is not installed here"}
    if not shutil.which("java") and not os.environ.get("JAVA_HOME"):
        return {"skipped": "no Java runtime here (Spark needs one)"}
    os.environ.setdefault("SPARK_HOME", os.path.dirname(pyspark.__file__))
    os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    model_dir = work.model_dir or work.run.out / "spark-model"
    try:
        if work.model_dir is None:
            work.model.save_pretrained(model_dir)
            work.tokenizer.save_pretrained(model_dir)
        return scored_on_spark(work, str(model_dir))
    finally:
        if work.model_dir is None:
            shutil.rmtree(model_dir, ignore_errors=True)


def session_properties(run: RunSettings, cores: int) -> dict[str, str]:
    """gpu.conf's properties, changed only where a one-machine benchmark session must differ."""
    from spark_jobs.local_profile import read_properties

    props = {k: v for k, v in read_properties(GPU_PROFILE).items() if k not in TABLE_PROPERTIES}
    if run.on_gpu:
        # local-cluster's executor runs in a work directory of its own: the discovery script by its absolute
        # path. Its worker must offer the GPU the executor asks for (a cluster manager's work elsewhere).
        script = str(REPO / props["spark.executor.resource.gpu.discoveryScript"])
        props.update({"spark.executor.resource.gpu.discoveryScript": script,
                      "spark.worker.resource.gpu.amount": "1", "spark.worker.resource.gpu.discoveryScript": script})
    else:  # local[1] on the CPU (--smoke) has no GPU to discover or to hand a task
        props = {k: v for k, v in props.items() if ".resource.gpu." not in k}
    # One task holds the whole executor, as in gpu.conf, with the cores this machine's single worker has
    # (asking for gpu.conf's 8 where it has fewer, the executor would never start), and executor memory
    # that fits in the worker's 16 GB (local-cluster[1,cores,16384]; gpu.conf's 32g would not).
    props.update({"spark.executor.cores": str(cores), "spark.task.cpus": str(cores),
                  "spark.executor.memory": "8g" if run.on_gpu else "1g"})
    # Not in gpu.conf: the driver's memory (spark-submit's to set), no UI, and the repository on the workers' path.
    props.update({"spark.driver.memory": "8g" if run.on_gpu else "1g", "spark.ui.enabled": "false",
                  "spark.ui.showConsoleProgress": "false", "spark.executorEnv.PYTHONPATH": os.environ["PYTHONPATH"]})
    return props


def scored_on_spark(work: Workload, model_dir: str) -> dict:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from udfs.influence import ScoringSettings, score_documents

    run, texts = work.run, work.texts
    cores = max(1, min(8, (os.cpu_count() or 2) - 2)) if run.on_gpu else 1
    master = run.spark_master or (f"local-cluster[1,{cores},16384]" if run.on_gpu else "local[1]")
    builder = SparkSession.builder.master(master).appName("attention-influence-gpu-bench")
    for key, value in session_properties(run, cores).items():
        builder = builder.config(key, value)
    started = time.perf_counter()
    spark = builder.getOrCreate()
    try:
        session_s = time.perf_counter() - started
        settings = ScoringSettings(model=model_dir, heads=tuple(work.heads), max_seq_len=work.max_seq_len,
                                   dtype=run.dtype, text_col="text", carry_cols=("id",),
                                   batch_tokens=work.batch_tokens, masking=run.masking)

        def timed_job(rows):
            frame = spark.createDataFrame(rows, "id STRING, text STRING").coalesce(1)
            t = time.perf_counter()
            got = score_documents(frame, settings).agg(F.count("*"), F.sum("n_tokens"),
                                                       F.sum(F.when(F.col("status") == "ok", 1).otherwise(0))).first()
            return time.perf_counter() - t, got

        warm_s, _ = timed_job([("w", texts[0])])  # worker start + model load, kept apart
        elapsed, got = timed_job([(str(i), t) for i, t in enumerate(texts)])
        assert got[0] == len(texts), f"UDF returned {got[0]} rows for {len(texts)}"
        return {"master": master, "session_start_s": session_s, "warm_up_s": warm_s, "seconds": elapsed,
                "tokens": int(got[1]), "ok_rows": int(got[2]), "tokens_per_s": int(got[1]) / elapsed}
    finally:
        spark.stop()
