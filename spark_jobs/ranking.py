"""Ranks within groups by a distributed sort, so that no task holds a whole group (SPEC §4, at scale).

`ROW_NUMBER() OVER (PARTITION BY domain ORDER BY score)` sends every row of a domain through one
task: at the paper's scale about 190M rows in one sort. Here the rows are range-partitioned by
(group, order) as `ORDER BY` does it (Spark samples the keys for even ranges), sorted within each
range, and cut into blocks of at most 2^12 consecutive rows by their position in the range. A second
range exchange on the block id spreads the blocks evenly; `ROW_NUMBER` and running sums then run per
(group, block), and each block's offset within its group (the rows and sums of the group's earlier
blocks: one row per block, about 58,000 rows for 237M documents) comes back by a broadcast join.

For a total order (unique keys: the scored table's ids are unique) the rank equals the window's
`ROW_NUMBER()` and the running sum its `ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW`, tie for
tie; tests/test_ranking_at_scale.py holds the window query as the reference.
"""

from __future__ import annotations

BLOCK_BITS = 12  # rows per block: at most 2^12 = 4,096 consecutive rows of one range
BLOCK = "_ranking_block"


def rank_within_groups(frame, group: str, order: list, *, rank: str, group_rows: str,
                       running: tuple[str, str, str] | None = None):
    """`frame` with `rank` (INT, 1 = first in `order` within `group`) and `group_rows` (BIGINT) added;
    with `running=(column, running_name, total_name)` also the running sum of `column` in rank order
    (this row included) and the group's total.

    `group` is a column name of `frame` (nulls are a group of their own); `order` is a list of Columns
    that orders each group totally (ties broken by a unique key), e.g. `[F.col("score").desc(), F.col("id")]`.
    Pass a narrow `frame` (keys, the order, the summed column): its rows are shuffled twice.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = [F.col(group), *order]
    # Position within the sorted range: monotonically_increasing_id is (range << 33) + row index, so
    # shifting it keeps the global order and gives each block of 2^BLOCK_BITS rows its own id.
    placed = (frame.repartitionByRange(*keys).sortWithinPartitions(*keys)
              .withColumn(BLOCK, F.shiftright(F.monotonically_increasing_id(), BLOCK_BITS))
              .repartitionByRange(F.col(BLOCK)))
    in_block = Window.partitionBy(group, BLOCK).orderBy(*order)
    ranked = placed.withColumn("_row_in_block", F.row_number().over(in_block))
    sums = [F.count(F.lit(1)).alias("_block_rows")]
    if running:
        column, _, _ = running
        ranked = ranked.withColumn("_sum_in_block", F.sum(column).over(
            in_block.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
        sums.append(F.sum(column).alias("_block_sum"))

    blocks = placed.groupBy(group, BLOCK).agg(*sums)
    earlier = Window.partitionBy(group).orderBy(BLOCK).rowsBetween(Window.unboundedPreceding, -1)
    whole = Window.partitionBy(group)
    offsets = blocks.select(
        F.col(group).alias("_offset_group"), F.col(BLOCK).alias("_offset_block"),
        F.coalesce(F.sum("_block_rows").over(earlier), F.lit(0)).alias("_rows_before"),
        F.sum("_block_rows").over(whole).alias(group_rows),
        *([F.coalesce(F.sum("_block_sum").over(earlier), F.lit(0)).alias("_sum_before"),
           F.sum("_block_sum").over(whole).alias(running[2])] if running else []))
    joined = ranked.join(F.broadcast(offsets), F.col(group).eqNullSafe(F.col("_offset_group"))
                         & (F.col(BLOCK) == F.col("_offset_block")))
    result = joined.withColumn(rank, (F.col("_rows_before") + F.col("_row_in_block")).cast("int"))
    if running:
        result = result.withColumn(running[1], F.col("_sum_before") + F.col("_sum_in_block"))
    internal = [BLOCK, "_row_in_block", "_offset_group", "_offset_block", "_rows_before", "_sum_in_block",
                "_sum_before"]
    return result.drop(*[c for c in internal if c in result.columns])
