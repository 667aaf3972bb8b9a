-- The selection as one window query: select_top.sql before it ranked at scale (tests/test_ranking_at_scale.py
-- holds it as the reference the distributed ranking must equal, tie for tie).
-- Select the highest-scoring documents of each domain (or of the whole table).
-- Reads the temporary view `candidates_source` (the scored table plus
-- `selection_id` and `selection_domain`, added by select.py from the id and
-- domain columns). Named parameters:
--   :by_domain    BOOLEAN  rank within each domain (true) or over all rows (false)
--   :use_budget   BOOLEAN  cut by token budget (true) or by fraction (false)
--   :fraction     DOUBLE   share of each domain's candidates to keep
--   :token_budget BIGINT   tokens to keep in all; per domain in proportion to its candidate tokens
--   :min_tokens   INT      shorter documents are not candidates
-- Only status = 'ok' rows compete; ties break by id, so reruns are identical.
WITH candidates AS (
  SELECT *, CASE WHEN :by_domain THEN selection_domain ELSE '*' END AS ranking_group
  FROM candidates_source
  WHERE status = 'ok' AND attention_influence IS NOT NULL AND n_tokens >= :min_tokens
),
ranked AS (
  SELECT *,
    ROW_NUMBER() OVER ranking AS rank_in_domain,
    1.0D - PERCENT_RANK() OVER ranking AS percentile_in_domain,
    SUM(n_tokens) OVER (PARTITION BY ranking_group ORDER BY attention_influence DESC, selection_id ASC
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS tokens_so_far,
    COUNT(*) OVER (PARTITION BY ranking_group) AS group_documents,
    SUM(n_tokens) OVER (PARTITION BY ranking_group) AS group_tokens,
    SUM(n_tokens) OVER () AS all_tokens
  FROM candidates
  WINDOW ranking AS (PARTITION BY ranking_group ORDER BY attention_influence DESC, selection_id ASC)
)
SELECT * EXCEPT (selection_id, selection_domain, ranking_group, tokens_so_far, group_documents,
                 group_tokens, all_tokens)
FROM ranked
WHERE CASE
  WHEN :use_budget THEN tokens_so_far <= :token_budget * group_tokens / all_tokens
  ELSE rank_in_domain <= CEIL(:fraction * group_documents)
END
