-- What a selection favours, per domain, before it is trusted (notebooks/04_analyse.py).
-- Reads the temporary view `scored` (a score.py table). Named parameter:
--   :fraction DOUBLE  share of each domain's ok documents to select (as select.py does)
-- Two selections side by side: the top `fraction` by attention_influence (ties by id, the
-- select.py rule) and the top `fraction` by lowest loss_full (perplexity filtering), with
-- how far each leans on document length and how much the two overlap (Jaccard).
WITH ok AS (
  SELECT id, domain, n_tokens, loss_full, attention_influence
  FROM scored WHERE status = 'ok' AND attention_influence IS NOT NULL
),
ranked AS (
  SELECT *,
    ROW_NUMBER() OVER (PARTITION BY domain ORDER BY attention_influence DESC, id) AS influence_rank,
    ROW_NUMBER() OVER (PARTITION BY domain ORDER BY loss_full ASC, id) AS loss_rank,
    COUNT(*) OVER (PARTITION BY domain) AS domain_documents
  FROM ok
),
flagged AS (
  SELECT *,
    influence_rank <= CEIL(:fraction * domain_documents) AS by_influence,
    loss_rank <= CEIL(:fraction * domain_documents) AS by_low_loss
  FROM ranked
)
SELECT domain,
  COUNT(*) AS documents,
  ROUND(CORR(attention_influence, n_tokens), 3) AS corr_n_tokens,
  ROUND(CORR(attention_influence, loss_full), 3) AS corr_loss_full,
  CAST(PERCENTILE(n_tokens, 0.5) AS INT) AS median_tokens,
  CAST(PERCENTILE(n_tokens, 0.5) FILTER (WHERE by_influence) AS INT) AS median_tokens_selected,
  CAST(PERCENTILE(n_tokens, 0.5) FILTER (WHERE by_low_loss) AS INT) AS median_tokens_low_loss,
  COUNT_IF(by_influence) AS selected,
  COUNT_IF(by_low_loss) AS selected_low_loss,
  COUNT_IF(by_influence AND by_low_loss) AS in_both,
  ROUND(COUNT_IF(by_influence AND by_low_loss) / COUNT_IF(by_influence OR by_low_loss), 3) AS jaccard
FROM flagged
GROUP BY domain
ORDER BY domain
