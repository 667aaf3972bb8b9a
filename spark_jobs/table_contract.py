"""Names the jobs share through Delta tables: the columns score.py adds and the table properties.

score.py writes these properties and select.py reads them back (the id and domain columns), so
each key is spelled once, here. The score columns themselves are the UDF's
(`udfs.influence.SCORE_COLUMNS`, `TOKEN_LOSS_COLUMNS`).
"""

from __future__ import annotations

# Columns score.py adds to the UDF's output.
SCORER_COLUMN = "scorer"        # fingerprint of everything that changes a score
SCORED_AT_COLUMN = "scored_at"  # when the row was scored
ADDED_COLUMNS = (SCORER_COLUMN, SCORED_AT_COLUMN)

# Table properties (TBLPROPERTIES) the jobs record for provenance.
PROPERTY_PREFIX = "attention_influence."
SCORER = PROPERTY_PREFIX + "scorer"
SCORER_CONFIG = PROPERTY_PREFIX + "scorer_config"
ID_COL = PROPERTY_PREFIX + "id_col"
DOMAIN_COL = PROPERTY_PREFIX + "domain_col"
INPUT = PROPERTY_PREFIX + "input"  # the documents score.py read: select.py joins back columns not carried
MODEL = PROPERTY_PREFIX + "model"
MODEL_REVISION = PROPERTY_PREFIX + "model_revision"
TOP_FRACTION = PROPERTY_PREFIX + "top_fraction"
SAMPLES = PROPERTY_PREFIX + "samples"
CONTEXT_TOKENS = PROPERTY_PREFIX + "context_tokens"
