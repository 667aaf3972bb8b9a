"""The filter stage's per-document work as a pandas UDF: (text, domain) -> (content hash, first rule broken).

The rules live in `attention_influence.filter_rules` (and the modules it names); this only maps them
over an Arrow batch, with each row's domain choosing its rule set.
"""

from __future__ import annotations

import pandas as pd

FILTER_DDL = "content_hash STRING, filter_rule STRING, dedup BOOLEAN, near_dedup BOOLEAN"


def _value(value):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def filter_columns(texts: pd.Series, domains: pd.Series, config) -> pd.DataFrame:
    """One row per text: its exact-duplicate key, the first rule it breaks (None if it passes, or if its
    domain runs no rule), and whether its domain removes exact and near-duplicates. `config` is an
    `attention_influence.filter_rules.FilterConfig`."""
    from attention_influence.gopher import content_hash

    hashes, rules, dedup, near = [], [], [], []
    for text, domain in zip(map(_value, texts), map(_value, domains)):
        rule_set = config.rules_for(domain)
        hashes.append(content_hash(text))
        rules.append(rule_set.first_rule(text) if rule_set.rules else None)
        dedup.append(rule_set.dedups)
        near.append(rule_set.near_dedups)
    return pd.DataFrame({"content_hash": hashes, "filter_rule": rules, "dedup": dedup, "near_dedup": near})


def filter_udf(config):
    """`filter_columns` with `config` as a Spark pandas UDF of (text, domain) returning a struct (built
    lazily: importing needs no Spark)."""
    from pyspark.sql.functions import pandas_udf

    def columns(texts: pd.Series, domains: pd.Series) -> pd.DataFrame:
        return filter_columns(texts, domains, config)

    return pandas_udf(columns, returnType=FILTER_DDL)
