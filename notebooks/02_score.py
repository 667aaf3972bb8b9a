# Databricks notebook source
# MAGIC %md
# MAGIC # 2 · Score documents
# MAGIC Every document gets the loss of the full model and of the model with the retrieval heads
# MAGIC masked; `attention_influence = (loss_masked - loss_full) / loss_full` (SPEC §3). Runs
# MAGIC incrementally: a rerun only scores ids that are not in the output yet.

# COMMAND ----------

from spark_jobs import score
from spark_jobs.notebook import demo_paths, run_job, session

spark = session(globals().get("spark"))
paths = demo_paths()

# COMMAND ----------

run_job(score, "--input", paths.corpus, "--output", paths.scored, "--model", paths.model,
        "--heads", paths.heads_json)

# COMMAND ----------

# MAGIC %md Statuses and score ranges per domain, in plain SQL over the Delta table:

# COMMAND ----------

spark.read.format("delta").load(paths.scored).createOrReplaceTempView("scored")
spark.sql("""
    SELECT domain, status, COUNT(*) AS documents, SUM(n_tokens) AS tokens,
           ROUND(AVG(attention_influence), 4) AS mean_influence,
           ROUND(PERCENTILE(attention_influence, 0.9), 4) AS p90_influence
    FROM scored GROUP BY domain, status ORDER BY domain, status
""").show()
