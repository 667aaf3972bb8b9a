"""The filter stage's per-document work as a pandas UDF: text -> (content hash, first Gopher rule broken).

The rules live in `attention_influence.gopher`; this only maps them over an Arrow batch.
"""

from __future__ import annotations

import pandas as pd

FILTER_DDL = "content_hash STRING, gopher_rule STRING"


def filter_columns(texts: pd.Series) -> pd.DataFrame:
    """One row per text: its exact-duplicate key and the Gopher rule it breaks (None if it passes)."""
    from attention_influence.gopher import content_hash, repetition_rule

    values = [None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
              for value in texts]
    return pd.DataFrame({"content_hash": [content_hash(t) for t in values],
                         "gopher_rule": [repetition_rule(t) for t in values]})


def filter_udf():
    """`filter_columns` as a Spark pandas UDF returning a struct (built lazily: importing needs no Spark)."""
    from pyspark.sql.functions import pandas_udf

    return pandas_udf(filter_columns, returnType=FILTER_DDL)
