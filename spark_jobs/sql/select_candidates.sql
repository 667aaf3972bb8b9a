-- The candidates of a selection, narrow: what the ranking sorts (spark_jobs/select.py).
-- Reads the temporary view `candidates_source` (the scored table plus `selection_id` and
-- `selection_domain`, added by select.py from the id and domain columns). Named parameters:
--   :by_domain    BOOLEAN  rank within each domain (true) or over all rows (false)
--   :min_tokens   INT      shorter documents are not candidates
-- Only status = 'ok' rows with a score compete.
SELECT selection_id,
       CASE WHEN :by_domain THEN selection_domain ELSE '*' END AS ranking_group,
       attention_influence,
       n_tokens
FROM candidates_source
WHERE status = 'ok' AND attention_influence IS NOT NULL AND n_tokens >= :min_tokens
