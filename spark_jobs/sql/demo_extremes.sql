-- The highest- and lowest-scoring documents of each domain, for the demo's summary.
-- Reads the temporary view `scored_documents` (the scored table with its id and domain
-- columns named `id` and `domain`). Named parameter:
--   :per_side  INT  documents shown at each end of each domain
-- Only status = 'ok' rows; ties break by id, so reruns print the same rows.
WITH ranked AS (
  SELECT domain, id, n_tokens, loss_full, loss_masked, attention_influence, text,
    ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence DESC, id ASC) AS rank_from_top,
    ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence ASC, id ASC) AS rank_from_bottom
  FROM scored_documents
  WHERE status = 'ok' AND attention_influence IS NOT NULL
)
SELECT domain, CASE WHEN rank_from_top <= :per_side THEN 'top' ELSE 'bottom' END AS side,
       id, n_tokens, loss_full, loss_masked, attention_influence, LEFT(text, 200) AS text_start
FROM ranked
WHERE rank_from_top <= :per_side OR rank_from_bottom <= :per_side
ORDER BY domain, attention_influence DESC, id
