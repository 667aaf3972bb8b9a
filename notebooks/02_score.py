# Databricks notebook source
# MAGIC %md
# MAGIC # 2 · Score documents
# MAGIC Every document gets the loss of the full model and of the model with the retrieval heads
# MAGIC masked; `attention_influence = (loss_masked - loss_full) / loss_full` (SPEC §3). Runs
# MAGIC incrementally: a rerun only scores ids that are not in the output yet. Set `dry_run` to
# MAGIC `true` to see what would be scored (documents, estimated tokens, tasks) without writing.

# COMMAND ----------

from spark_jobs import score
from spark_jobs.notebook import default_output, default_model, demo_paths, job_defaults, session, show, widgets

spark = session(globals().get("spark"))
score_defaults = job_defaults("score")
params = widgets(globals().get("dbutils"), {
    "output_dir": default_output(),
    "model": default_model(),
    "mode": score_defaults["mode"],
    "dry_run": "false",
})
paths = demo_paths(params["output_dir"], params["model"])

# COMMAND ----------

score.run(spark, score.options(input=paths.corpus, output=paths.scored, model=paths.model, heads=paths.heads_json,
                               mode=params["mode"], dry_run=params["dry_run"].strip().lower() == "true"))

# COMMAND ----------

# MAGIC %md Statuses and score ranges per domain, in plain SQL over the Delta table:

# COMMAND ----------

spark.read.format("delta").load(paths.scored).createOrReplaceTempView("scored")
show(spark.sql("""
    SELECT domain, status, COUNT(*) AS documents, SUM(n_tokens) AS tokens,
           ROUND(AVG(attention_influence), 4) AS mean_influence,
           ROUND(PERCENTILE(attention_influence, 0.9), 4) AS p90_influence
    FROM scored GROUP BY domain, status ORDER BY domain, status
"""), globals().get("display"))
