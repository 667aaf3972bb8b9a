# Databricks notebook source
# MAGIC %md
# MAGIC # 3 · Select
# MAGIC Keeps the top 20% of each domain by `attention_influence` with Spark SQL window functions
# MAGIC (SPEC §4); ties break by id, so reruns give the same table.

# COMMAND ----------

import os

from spark_jobs import select
from spark_jobs.notebook import demo_paths, run_job, session

spark = session(globals().get("spark"))
paths = demo_paths()

# COMMAND ----------

run_job(select, "--input", paths.scored, "--output", paths.selected,
        "--fraction", os.environ.get("ATTENTION_INFLUENCE_FRACTION", "0.2"))

# COMMAND ----------

spark.read.format("delta").load(paths.selected).createOrReplaceTempView("selected")
spark.sql("""
    SELECT domain, COUNT(*) AS documents, SUM(n_tokens) AS tokens,
           MIN(attention_influence) AS threshold
    FROM selected GROUP BY domain ORDER BY domain
""").show()
