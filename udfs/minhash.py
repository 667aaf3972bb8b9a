"""Near-duplicate band keys as a pandas UDF: text -> its MinHash band keys (`attention_influence.minhash`)."""

from __future__ import annotations

import pandas as pd

BAND_KEYS_TYPE = "array<bigint>"


def band_key_lists(texts: pd.Series, config=None) -> pd.Series:
    """One list of band keys per text; None for a missing text or one under n words."""
    from attention_influence.minhash import FINEWEB, band_keys

    config = config or FINEWEB
    return pd.Series([band_keys(value if isinstance(value, str) else None, config) for value in texts], dtype=object)


def band_keys_udf(config=None):
    """`band_key_lists` for `config` (default FineWeb's) as a Spark pandas UDF (built lazily: importing needs no Spark)."""
    from pyspark.sql.functions import pandas_udf

    def band_keys_column(texts: pd.Series) -> pd.Series:
        return band_key_lists(texts, config)

    return pandas_udf(band_keys_column, returnType=BAND_KEYS_TYPE)
