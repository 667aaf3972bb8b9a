# Databricks notebook source
# MAGIC %md
# MAGIC # 3 · Select
# MAGIC Keeps the top share of each domain by `attention_influence` with Spark SQL window functions
# MAGIC (SPEC §4); ties break by id, so reruns give the same table. The share is the `fraction`
# MAGIC widget (default from `conf/select.yaml`). Look at notebook 4 before trusting a share.

# COMMAND ----------

from spark_jobs import select
from spark_jobs.notebook import default_output, demo_paths, job_defaults, session, show, widgets

spark = session(globals().get("spark"))
params = widgets(globals().get("dbutils"), {
    "output_dir": default_output(),
    "fraction": job_defaults("select")["fraction"],
})
paths = demo_paths(params["output_dir"])

# COMMAND ----------

select.run(spark, select.options(input=paths.scored, output=paths.selected, fraction=params["fraction"]))

# COMMAND ----------

spark.read.format("delta").load(paths.selected).createOrReplaceTempView("selected")
show(spark.sql("""
    SELECT domain, COUNT(*) AS documents, SUM(n_tokens) AS tokens,
           MIN(attention_influence) AS threshold
    FROM selected GROUP BY domain ORDER BY domain
"""), globals().get("display"))
