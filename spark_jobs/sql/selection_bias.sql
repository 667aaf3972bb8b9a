-- What a selection favours, per domain, before it is trusted (notebooks/04_analyse.py).
-- Reads the temporary view `selection_ranks` (spark_jobs/analysis.py: the ok rows of a score.py table
-- with `influence_rank`, `loss_rank` and `domain_documents`, ranked by a distributed sort rather than
-- a window over the domain). Named parameter:
--   :fraction DOUBLE  share of each domain's ok documents to select (as select.py does)
-- Two selections side by side: the top `fraction` by attention_influence (ties by id, the
-- select.py rule) and the top `fraction` by lowest loss_full (perplexity filtering), with
-- how far each leans on document length and how much the two overlap (Jaccard).
-- Every aggregate here is computed in parts per task and merged (no task reads a whole domain).
WITH flagged AS (
  SELECT *,
    influence_rank <= CEIL(:fraction * domain_documents) AS by_influence,
    loss_rank <= CEIL(:fraction * domain_documents) AS by_low_loss
  FROM selection_ranks
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
