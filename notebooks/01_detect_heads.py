# Databricks notebook source
# MAGIC %md
# MAGIC # 1 · Detect retrieval heads
# MAGIC Runs the synthetic key/value retrieval task and scores every attention head by how often its
# MAGIC strongest attention lands on the token the model copies (SPEC §2). The top 5% become the heads
# MAGIC we mask to make the *weak* model. Builds the sample corpus first if it is not there yet.
# MAGIC
# MAGIC Parameters are the widgets at the top (defaults from `conf/detect_heads.yaml` and
# MAGIC `conf/build_corpus.yaml`); run as a plain script, the defaults apply.

# COMMAND ----------

import json
from pathlib import Path

from spark_jobs import build_corpus, detect_heads
from spark_jobs.notebook import default_output, default_model, demo_paths, job_defaults, session, show, widgets

spark = session(globals().get("spark"))
detect_defaults = job_defaults("detect_heads")
params = widgets(globals().get("dbutils"), {
    "output_dir": default_output(),
    "model": default_model(),
    "samples": detect_defaults["samples"],
    "top_fraction": detect_defaults["top_fraction"],
    "context_tokens": detect_defaults["context_tokens"],
    "per_domain": job_defaults("build_corpus")["per_domain"],
})
paths = demo_paths(params["output_dir"], params["model"])

# COMMAND ----------

if not Path(paths.corpus).exists():
    build_corpus.run(spark, build_corpus.options(output=paths.corpus, per_domain=params["per_domain"]))
detect_heads.run(spark, detect_heads.options(model=paths.model, output=paths.head_scores, heads_out=paths.heads_json,
                                             samples=params["samples"], top_fraction=params["top_fraction"],
                                             context_tokens=params["context_tokens"]))

# COMMAND ----------

# MAGIC %md The head scores are an ordinary Delta table; the ten best heads:

# COMMAND ----------

spark.read.format("delta").load(paths.head_scores).createOrReplaceTempView("head_scores")
show(spark.sql("SELECT layer, head, retrieval_score, rank, selected FROM head_scores ORDER BY rank LIMIT 10"),
     globals().get("display"))

# COMMAND ----------

heads = json.loads(Path(paths.heads_json).read_text())
print(f"{len(heads['heads'])} selected heads {heads['heads']}; heatmap: {Path(paths.heads_json).with_suffix('.png')}")
