# Databricks notebook source
# MAGIC %md
# MAGIC # 4 · Analyse: what a selection favours
# MAGIC Before trusting a share, look at what the score rewards. Per domain: how `attention_influence`
# MAGIC correlates with document length (`n_tokens`) and with the plain loss (`loss_full`), the length
# MAGIC of the selected documents against their domain's, and a `loss_full`-based (perplexity)
# MAGIC selection of the same share beside it, with how much the two overlap (Jaccard). Plots go to
# MAGIC `<output_dir>/plots/`, the table also to `<output_dir>/analysis.txt` (the demo prints it).

# COMMAND ----------

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spark_jobs.notebook import default_output, demo_paths, job_defaults, session, show, widgets  # noqa: E402
from spark_jobs import analysis  # noqa: E402  (ranks by a distributed sort: no task holds a whole domain)

spark = session(globals().get("spark"))
display = globals().get("display")
params = widgets(globals().get("dbutils"), {
    "output_dir": default_output(),
    "fraction": job_defaults("select")["fraction"],
})
paths = demo_paths(params["output_dir"])
fraction = float(params["fraction"])
paths.plots.mkdir(parents=True, exist_ok=True)
scored = spark.read.format("delta").load(paths.scored)
scored.createOrReplaceTempView("scored")

# COMMAND ----------

# MAGIC %md Per domain, in Spark SQL (`spark_jobs/sql/selection_bias.sql`, `corr()` aggregates over the ranks
# MAGIC `spark_jobs/analysis.py` computes by a distributed sort, so a 190M-document domain is no one task's): a
# MAGIC correlation near 1 with `n_tokens` means the score mostly ranks by length; a strongly negative
# MAGIC one with `loss_full` means it favours text the model already predicts well (repetitive tables,
# MAGIC lists). `jaccard` is the overlap with the low-perplexity selection of the same share.

# COMMAND ----------

bias = analysis.selection_bias(spark, scored, fraction)
show(bias, display)
bias_rows = bias.collect()
summary = [f"what the top {fraction:.0%} per domain favours (attention_influence vs n_tokens, loss_full; "
           f"overlap with the lowest-loss {fraction:.0%}):"]
for r in bias_rows:
    summary.append(f"  {r['domain']}: {r['documents']} documents, corr(n_tokens) {r['corr_n_tokens']}, "
                   f"corr(loss_full) {r['corr_loss_full']}, median tokens {r['median_tokens_selected']} selected "
                   f"vs {r['median_tokens']} in the domain ({r['median_tokens_low_loss']} by low loss), "
                   f"jaccard {r['jaccard']} ({r['in_both']} of {r['selected']} in both)")
(paths.out / "analysis.txt").write_text("\n".join(summary) + "\n")
print("\n".join(summary))

# COMMAND ----------

# The plots draw a seeded sample of at most analysis.PLOT_SAMPLE_ROWS documents (all of them on the demo),
# with each one's place in the top share computed over the whole table.
scores = analysis.plot_sample(spark, fraction)
domains = sorted(scores["domain"].unique())

fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
for domain in domains:
    group = scores[scores["domain"] == domain]
    axes[0].scatter(group["n_tokens"], group["attention_influence"], s=6, alpha=0.6, label=domain)
    axes[1].scatter(group["loss_full"], group["attention_influence"], s=6, alpha=0.6, label=domain)
axes[0].set_xscale("log")
axes[0].set_xlabel("n_tokens (log scale)")
axes[1].set_xlabel("loss_full (nats/token)")
for ax in axes:
    ax.set_ylabel("attention_influence")
    ax.legend()
fig.tight_layout()
fig.savefig(paths.plots / "influence_vs_length_and_loss.png", dpi=110)

fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.5), squeeze=False)
for ax, domain in zip(axes[0], domains):
    group = scores[scores["domain"] == domain]
    bins = max(5, min(30, len(group) // 2))
    ax.hist(group["n_tokens"], bins=bins, alpha=0.5, label=f"domain ({len(group)})")
    ax.hist(group[group["selected"]]["n_tokens"], bins=bins, alpha=0.7, label=f"selected ({int(group['selected'].sum())})")
    ax.set_title(domain)
    ax.set_xlabel("n_tokens")
    ax.legend()
fig.tight_layout()
fig.savefig(paths.plots / "selected_length_by_domain.png", dpi=110)

fig, ax = plt.subplots(figsize=(7, 4))
for domain in domains:
    group = scores[scores["domain"] == domain]
    ax.hist(group["attention_influence"], bins=40, alpha=0.5, label=f"{domain} ({len(group)})")
ax.set_xlabel("attention_influence = (loss_masked - loss_full) / loss_full")
ax.set_ylabel("documents")
ax.legend()
fig.tight_layout()
fig.savefig(paths.plots / "influence_by_domain.png", dpi=110)
print(f"plots: {sorted(str(p) for p in paths.plots.glob('*.png'))}")

# COMMAND ----------

# MAGIC %md The documents each selection keeps at the top of each domain:

# COMMAND ----------

show(analysis.top_documents(spark, scored, "influence_rank", 3), display)
show(analysis.top_documents(spark, scored, "loss_rank", 3), display)

# COMMAND ----------

# What failed, and why?
show(spark.sql("SELECT status, error, COUNT(*) AS documents FROM scored WHERE status <> 'ok' GROUP BY ALL"), display)

# COMMAND ----------

# MAGIC %md Planted probes (`spark_jobs/probe.py`; `make demo` runs it after scoring, `make probe` alone):
# MAGIC HumanEval's solutions among length-matched code documents of this table, scored with the same
# MAGIC model, heads and masking. A selector that prefers documents like them puts more than
# MAGIC `base_rate` in its top, with `ci_low` above it; `random` sits near the base rate.

# COMMAND ----------

from spark_jobs.tables import table_exists  # noqa: E402

probe_report = str(paths.out / "probe_report")
if table_exists(spark, probe_report):
    show(spark.read.format("delta").load(probe_report)
         .select("probe_set", "selector", "share_in_top", "base_rate", "ci_low", "ci_high", "probes", "controls",
                 "dropped_probes").orderBy("probe_set", "selector"), display)
else:
    print(f"no probe report at {probe_report}: run spark_jobs/probe.py (make probe) first")
