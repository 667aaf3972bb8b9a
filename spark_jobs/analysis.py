"""What a selection favours, at any scale: the ranks notebook 04 and the demo summary query.

Each rank is spark_jobs/ranking.py's distributed sort over narrow rows (id, domain, one score), never
a window over a domain; the ranks of one document meet by a join on its id, which spreads evenly.
The SQL that reads them is in spark_jobs/sql/ (selection_bias.sql, demo_extremes.sql).
"""

from __future__ import annotations

from pathlib import Path

from spark_jobs.session import run_sql
from spark_jobs.ranking import rank_within_groups

SQL = Path(__file__).with_name("sql")
SELECTION_BIAS_SQL = SQL / "selection_bias.sql"
EXTREMES_SQL = SQL / "demo_extremes.sql"
PLOT_SAMPLE_ROWS = 100_000  # notebook 04's scatter plots and histograms draw at most about this many documents


def ok_documents(scored):
    """Rows with a score: the candidates of every selection (`id` and `domain` columns, as make demo writes)."""
    from pyspark.sql import functions as F

    return scored.where((F.col("status") == "ok") & F.col("attention_influence").isNotNull())


def _text(scored):
    """The text column, or nulls when score.py ran with a --carry-cols that left it out."""
    from pyspark.sql import functions as F

    return F.col("text") if "text" in scored.columns else F.lit(None).cast("string").alias("text")


def _ranked(scored, column: str, descending: bool, rank: str, with_rows: bool = False):
    """(id, `rank`[, domain_documents]): each ok document's place in its domain by `column`, ties by id."""
    from pyspark.sql import functions as F

    narrow = ok_documents(scored).select("id", "domain", column)
    by = F.col(column).desc() if descending else F.col(column).asc()
    ranked = rank_within_groups(narrow, "domain", [by, F.col("id").asc()], rank=rank, group_rows="domain_documents")
    return ranked.select("id", rank, *(["domain_documents"] if with_rows else []))


def register_selection_ranks(spark, scored) -> None:
    """View `selection_ranks`: the ok rows (id, domain, n_tokens, loss_full, loss_masked,
    attention_influence) with `influence_rank` (by attention_influence, highest first, ties by id),
    `loss_rank` (by loss_full, lowest first) and `domain_documents`."""
    by_influence = _ranked(scored, "attention_influence", True, "influence_rank", with_rows=True)
    by_loss = _ranked(scored, "loss_full", False, "loss_rank")
    base = ok_documents(scored).select("id", "domain", "n_tokens", "loss_full", "loss_masked", "attention_influence")
    base.join(by_influence, "id").join(by_loss, "id").createOrReplaceTempView("selection_ranks")


def selection_bias(spark, scored, fraction: float):
    """selection_bias.sql over `scored`: per domain, how the top `fraction` leans on length and loss."""
    register_selection_ranks(spark, scored)
    return run_sql(spark, SELECTION_BIAS_SQL.read_text(), {"fraction": float(fraction)})


def plot_sample(spark, fraction: float, rows: int = PLOT_SAMPLE_ROWS):
    """About `rows` documents of `selection_ranks` (a seeded sample, all of them when fewer) as pandas,
    with `selected`: in their domain's top `fraction` by attention_influence (select.py's rule)."""
    from pyspark.sql import functions as F

    ranks = spark.table("selection_ranks")
    total = ranks.count()
    if total > rows:
        ranks = ranks.sample(fraction=rows / total, seed=0)
    selected = F.col("influence_rank") <= F.ceil(F.lit(float(fraction)) * F.col("domain_documents"))
    return ranks.select("domain", "n_tokens", "loss_full", "loss_masked", "attention_influence",
                        selected.alias("selected")).toPandas()


def top_documents(spark, scored, rank: str, per_domain: int):
    """The first `per_domain` documents of each domain by `rank` (a column of `selection_ranks`), with the
    start of their text."""
    from pyspark.sql import functions as F

    chosen = spark.table("selection_ranks").where(F.col(rank) <= per_domain).select("id", rank)
    return (scored.join(F.broadcast(chosen), "id")
            .select("domain", "id", F.round("attention_influence", 4).alias("influence"),
                    F.round("loss_full", 3).alias("loss_full"), "n_tokens",
                    F.substring(_text(scored), 1, 60).alias("start"), rank)
            .orderBy("domain", rank))


def extremes(spark, scored, per_side: int):
    """demo_extremes.sql: the `per_side` highest and lowest attention_influence documents of each domain."""
    from pyspark.sql import functions as F

    top = _ranked(scored, "attention_influence", True, "rank_from_top")
    bottom = _ranked(scored, "attention_influence", False, "rank_from_bottom")
    ends = (top.join(bottom, "id")
            .where((F.col("rank_from_top") <= per_side) | (F.col("rank_from_bottom") <= per_side)))
    (ok_documents(scored).select("id", "domain", "n_tokens", "loss_full", "loss_masked", "attention_influence",
                                 _text(scored))
     .join(F.broadcast(ends), "id").createOrReplaceTempView("extreme_documents"))
    return run_sql(spark, EXTREMES_SQL.read_text(), {"per_side": int(per_side)})
