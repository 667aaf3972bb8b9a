-- The highest- and lowest-scoring documents of each domain, for the demo's summary.
-- Reads the temporary view `extreme_documents` (spark_jobs/analysis.py: the ok documents within
-- :per_side of either end of their domain, with `rank_from_top` by attention_influence DESC, id ASC
-- and `rank_from_bottom` by attention_influence ASC, id ASC). Named parameter:
--   :per_side  INT  documents shown at each end of each domain
-- Ties break by id, so reruns print the same rows.
SELECT domain, CASE WHEN rank_from_top <= :per_side THEN 'top' ELSE 'bottom' END AS side,
       id, n_tokens, loss_full, loss_masked, attention_influence, LEFT(text, 200) AS text_start
FROM extreme_documents
WHERE rank_from_top <= :per_side OR rank_from_bottom <= :per_side
ORDER BY domain, attention_influence DESC, id
