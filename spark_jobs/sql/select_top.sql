-- Select the highest-scoring documents of each domain (or of the whole table).
-- Reads four temporary views that spark_jobs/select.py registers:
--   candidates_source   the scored table plus `selection_id` and `selection_domain`
--   input_columns       (selection_id, the columns of score.py's input the scored table does not carry,
--                       e.g. the text under --carry-cols id,domain); no rows when it carries them all
--   ranking_candidates  select_candidates.sql: (selection_id, ranking_group, attention_influence, n_tokens)
--   ranked_candidates   ranking_candidates ranked by spark_jobs/ranking.py within each ranking_group by
--                       attention_influence DESC, selection_id ASC: rank_in_domain, group_documents,
--                       tokens_so_far (running, this row included), group_tokens
-- That ranking is ROW_NUMBER() OVER (PARTITION BY ranking_group ORDER BY attention_influence DESC,
-- selection_id), computed by a distributed sort so that no task holds a whole domain. Named parameters:
--   :use_budget   BOOLEAN  cut by token budget (true) or by fraction (false)
--   :fraction     DOUBLE   share of each domain's candidates to keep
--   :token_budget BIGINT   tokens to keep in all; per domain in proportion to its candidate tokens
--   :min_tokens   INT      shorter documents are not candidates
-- Only status = 'ok' rows compete; ties break by id, so reruns are identical.
WITH totals AS (
  SELECT SUM(n_tokens) AS all_tokens FROM ranking_candidates
),
chosen AS (
  SELECT selection_id,
    rank_in_domain,
    CASE WHEN group_documents > 1
         THEN 1.0D - CAST(rank_in_domain - 1 AS DOUBLE) / CAST(group_documents - 1 AS DOUBLE)
         ELSE 1.0D END AS percentile_in_domain
  FROM ranked_candidates CROSS JOIN totals
  WHERE CASE
    -- in DOUBLE: token_budget x group_tokens overflows BIGINT at the paper's 241B tokens
    WHEN :use_budget THEN tokens_so_far <= CAST(:token_budget AS DOUBLE) * group_tokens / all_tokens
    ELSE rank_in_domain <= CEIL(:fraction * group_documents)
  END
)
SELECT s.* EXCEPT (selection_id, selection_domain), i.* EXCEPT (selection_id),
       c.rank_in_domain, c.percentile_in_domain
FROM candidates_source AS s
JOIN chosen AS c ON s.selection_id = c.selection_id
LEFT JOIN input_columns AS i ON s.selection_id = i.selection_id
WHERE s.status = 'ok' AND s.attention_influence IS NOT NULL AND s.n_tokens >= :min_tokens
