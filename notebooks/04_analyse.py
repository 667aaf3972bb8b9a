# Databricks notebook source
# MAGIC %md
# MAGIC # 4 · Analyse
# MAGIC How the score is distributed per domain, how it relates to the plain loss, and which
# MAGIC documents rank highest. Plots go to `demo-output/plots/`.

# COMMAND ----------

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spark_jobs.notebook import demo_paths, session  # noqa: E402

spark = session(globals().get("spark"))
paths = demo_paths()
paths.plots.mkdir(parents=True, exist_ok=True)
spark.read.format("delta").load(paths.scored).createOrReplaceTempView("scored")

# COMMAND ----------

scores = spark.sql("""
    SELECT domain, n_tokens, loss_full, loss_masked, attention_influence
    FROM scored WHERE status = 'ok'
""").toPandas()

fig, ax = plt.subplots(figsize=(7, 4))
for domain, group in scores.groupby("domain"):
    ax.hist(group["attention_influence"], bins=40, alpha=0.5, label=f"{domain} ({len(group)})")
ax.set_xlabel("attention_influence = (loss_masked - loss_full) / loss_full")
ax.set_ylabel("documents")
ax.legend()
fig.tight_layout()
fig.savefig(paths.plots / "influence_by_domain.png", dpi=110)

fig, ax = plt.subplots(figsize=(5, 5))
for domain, group in scores.groupby("domain"):
    ax.scatter(group["loss_full"], group["loss_masked"], s=4, alpha=0.5, label=domain)
low, high = scores[["loss_full", "loss_masked"]].min().min(), scores[["loss_full", "loss_masked"]].max().max()
ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
ax.set_xlabel("loss_full (nats/token)")
ax.set_ylabel("loss_masked (nats/token)")
ax.legend()
fig.tight_layout()
fig.savefig(paths.plots / "loss_full_vs_masked.png", dpi=110)
print(f"plots: {sorted(str(p) for p in paths.plots.glob('*.png'))}")

# COMMAND ----------

# MAGIC %md Three questions users ask of a scored table:

# COMMAND ----------

# Which domains gain most from the retrieval heads?
spark.sql("""
    SELECT domain, COUNT(*) AS documents, ROUND(AVG(attention_influence), 4) AS mean_influence
    FROM scored WHERE status = 'ok' GROUP BY domain ORDER BY mean_influence DESC
""").show()

# The highest-scoring documents of each domain
spark.sql("""
    SELECT domain, id, ROUND(attention_influence, 4) AS influence, n_tokens, LEFT(text, 60) AS start
    FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence DESC, id) AS r
          FROM scored WHERE status = 'ok')
    WHERE r <= 3 ORDER BY domain, r
""").show(truncate=False)

# What failed, and why?
spark.sql("SELECT status, error, COUNT(*) AS documents FROM scored WHERE status <> 'ok' GROUP BY ALL").show(
    truncate=False)
