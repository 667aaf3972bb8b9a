# Databricks notebook source
# MAGIC %md
# MAGIC # 1 · Detect retrieval heads
# MAGIC Runs the synthetic key/value retrieval task and scores every attention head by how often its
# MAGIC strongest attention lands on the token the model copies (SPEC §2). The top 5% become the heads
# MAGIC we mask to make the *weak* model. Builds the sample corpus first if it is not there yet.

# COMMAND ----------

import json
import os
from pathlib import Path

from spark_jobs import build_corpus, detect_heads
from spark_jobs.notebook import demo_paths, run_job, session

spark = session(globals().get("spark"))
paths = demo_paths()

# COMMAND ----------

if not Path(paths.corpus).exists():
    run_job(build_corpus, "--output", paths.corpus,
            "--per-domain", os.environ.get("ATTENTION_INFLUENCE_DOCS", "1000"))
run_job(detect_heads, "--model", paths.model, "--output", paths.head_scores, "--heads-out", paths.heads_json,
        "--samples", os.environ.get("ATTENTION_INFLUENCE_SAMPLES", "32"))

# COMMAND ----------

# MAGIC %md The head scores are an ordinary Delta table; the ten best heads:

# COMMAND ----------

spark.read.format("delta").load(paths.head_scores).createOrReplaceTempView("head_scores")
spark.sql("SELECT layer, head, retrieval_score, rank, selected FROM head_scores ORDER BY rank LIMIT 10").show()

# COMMAND ----------

heads = json.loads(Path(paths.heads_json).read_text())
print(f"{len(heads['heads'])} selected heads {heads['heads']}; heatmap: {Path(paths.heads_json).with_suffix('.png')}")
