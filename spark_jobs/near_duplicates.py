"""Near-duplicate clusters by MinHash, as FineWeb removed them, with no task that holds a cluster.

Two documents are near-duplicates when one of their 14 MinHash bands is equal
(`attention_influence.minhash`: word 5-grams, 112 hashes in 14 bands of 8, FineWeb's settings); a
cluster is a connected component of that relation, and it keeps one document: the smallest id.
FineWeb's datatrove finds the same components with a union-find in one process
(`MinhashDedupCluster`, `tasks=1`) and keeps its root (the larger set's, not the smallest id).

Here every step is a shuffle whose largest key is bounded, whatever a cluster's size:
1. band keys: a pandas UDF per document, exploded into (band key, id) rows.
2. edges: a band key shared by many documents (a template page) must not go to one task. Its rows
   are spread over HUB_SPREAD groups by a hash of the id; a window over (key, group) gives each row
   its hub (the group's smallest id), and a window over the key's hubs alone (at most HUB_SPREAD
   rows) gives the key's smallest id. Edges id -> hub and hub -> key's smallest id connect exactly
   the documents that share a key; no node has more than about key size / HUB_SPREAD + HUB_SPREAD
   edges per key.
3. components: the smallest id spreads along the edges (min-label propagation), each round a join
   on the edges' target (bounded by the degree above) and an aggregation by source, only from nodes
   whose label changed; it stops when no label changes (rounds: the longest path to a cluster's
   smallest id). Pointer jumping (label of the label) would converge in fewer rounds but joins on
   the label, which a big cluster shares: one task.
4. the smallest id of each document's cluster joins back on the id.

Spark ML's `MinHashLSH` does not fit: it has OR-amplification only (each hash table is one
MinHash, no band of 8 that must agree), its similarity join groups rows by a hash value (a common
band goes to one task), and it returns pairs, not clusters.
"""

from __future__ import annotations

HUB_SPREAD = 1024  # groups per band key: a key's rows reach at most this many hubs
MAX_ROUNDS = 64    # label-propagation rounds before giving up (a chain of near-duplicates this long)

_ID, _KEY, _GROUP, _HUB, _KEY_MIN = "nd_id", "nd_band_key", "nd_group", "nd_hub", "nd_key_min"
_SRC, _DST, _LABEL, _OFFER, _CHANGED = "nd_src", "nd_dst", "nd_label", "nd_offer", "nd_changed"


def near_duplicate_of(documents, id_col: str, text_col: str, *, column: str = "near_duplicate_of",
                      config=None, max_rounds: int = MAX_ROUNDS):
    """`documents`, every row once, with `column` added: the smallest id of the row's near-duplicate
    cluster when that is not the row's own id (the row is a near-duplicate to remove), else NULL.

    Rows are nodes by id (two rows with one id are one node); a row with a NULL id, a NULL text or
    fewer than 5 words is never a near-duplicate. `config` is an `attention_influence.minhash.
    MinHashConfig` (default FineWeb's). The clusters are computed (several Spark jobs) when this is
    called; the returned frame only joins them back.

    Pass the documents the other rules keep: FineWeb deduplicated what its filters let through, and
    a document that a rule removes could otherwise be the one its cluster keeps (both would go).
    """
    from pyspark.sql import functions as F

    from spark_jobs.tables import quote_identifier

    if column in documents.columns:
        raise ValueError(f"documents already have a column {column}")
    edges = band_edges(documents.select(F.col(quote_identifier(id_col)).alias(_ID),
                                        F.col(quote_identifier(text_col)).alias("nd_text")), config)
    labels = smallest_connected_ids(edges, max_rounds)
    removed = labels.where(F.col(_LABEL) != F.col(_ID)).select(F.col(_ID), F.col(_LABEL).alias(column))
    joined = documents.join(removed, documents[quote_identifier(id_col)] == removed[_ID], "left")
    return joined.drop(removed[_ID])


def band_edges(documents, config=None):
    """Distinct edges (nd_src, nd_dst), nd_src > nd_dst, linking every two documents (nd_id, nd_text)
    that share a band. Both branches read one exchange (Spark reuses it), so the UDF runs once."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from udfs.minhash import band_keys_udf

    keyed = (documents.where(F.col(_ID).isNotNull())
             .select(_ID, F.explode(band_keys_udf(config)(F.col("nd_text"))).alias(_KEY))
             .withColumn(_GROUP, F.pmod(F.xxhash64(_ID), F.lit(HUB_SPREAD))))
    hubbed = keyed.withColumn(_HUB, F.min(_ID).over(Window.partitionBy(_KEY, _GROUP)))
    spokes = hubbed.where(F.col(_ID) != F.col(_HUB)).select(F.col(_ID).alias(_SRC), F.col(_HUB).alias(_DST))
    links = (hubbed.where(F.col(_ID) == F.col(_HUB)).select(_KEY, _HUB)
             .withColumn(_KEY_MIN, F.min(_HUB).over(Window.partitionBy(_KEY)))
             .where(F.col(_HUB) != F.col(_KEY_MIN)).select(F.col(_HUB).alias(_SRC), F.col(_KEY_MIN).alias(_DST)))
    return spokes.unionByName(links).distinct()


def smallest_connected_ids(edges, max_rounds: int = MAX_ROUNDS):
    """(nd_id, nd_label) for every node of `edges` (nd_src, nd_dst; undirected): the smallest id of its
    connected component. Materialised (local checkpoints); raises RuntimeError after `max_rounds`."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    def materialised(frame):
        return frame.localCheckpoint(eager=True, storageLevel=StorageLevel.MEMORY_AND_DISK)

    # Both directions, partitioned by target once: each round's join then shuffles only the senders.
    both = materialised(edges.select(_SRC, _DST).unionByName(
        edges.select(F.col(_DST).alias(_SRC), F.col(_SRC).alias(_DST))).repartition(_DST))
    labels = materialised(both.groupBy(_SRC).agg(F.min(_DST).alias(_LABEL))
                          .select(F.col(_SRC).alias(_ID), F.least(_LABEL, _SRC).alias(_LABEL)))
    senders = labels
    for _ in range(max_rounds):
        offers = (both.join(senders.select(F.col(_ID).alias(_DST), _LABEL), _DST)
                  .groupBy(F.col(_SRC).alias(_ID)).agg(F.min(_LABEL).alias(_OFFER)))
        updated = materialised(labels.join(offers, _ID, "left").select(
            _ID, F.least(_LABEL, _OFFER).alias(_LABEL), (F.col(_OFFER) < F.col(_LABEL)).alias(_CHANGED)))
        labels = updated.select(_ID, _LABEL)
        senders = updated.where(F.col(_CHANGED)).select(_ID, _LABEL)
        if senders.isEmpty():
            return labels
    raise RuntimeError(f"near-duplicate clusters did not settle in {max_rounds} rounds of label propagation")
