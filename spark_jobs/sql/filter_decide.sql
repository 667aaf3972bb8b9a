-- Decide, for every document, whether the filter stage keeps it, and if not, which rule rejects it.
-- Reads the temporary view `filter_source`: the input table plus `filter_id` (the id column),
-- `content_hash` (sha256 of the normalised text), `dedup` (the row's domain removes exact duplicates)
-- and `filter_rule` (the first per-text rule the text breaks, or NULL), added by filter.py.
-- No parameters: nothing from a flag is SQL text.
-- An exact duplicate (same hash as a document with a smaller id, both in domains that remove
-- exact duplicates; a group is never larger than its copies) is rejected as such, whatever
-- else it breaks; the first of each group (smallest id; same id: smallest text) is judged by the
-- per-text rules alone. Empty texts (null or blank) are `empty`, never duplicates of each other.
-- `duplicate_of` is the id that duplicate group keeps (or would keep).
WITH grouped AS (
  SELECT *,
    ROW_NUMBER() OVER same_text AS position_in_group,
    FIRST_VALUE(filter_id) OVER same_text AS group_first_id
  FROM filter_source
  WINDOW same_text AS (PARTITION BY content_hash, dedup ORDER BY filter_id ASC NULLS LAST, filter_text ASC NULLS LAST)
)
SELECT * EXCEPT (position_in_group, group_first_id),
  CASE WHEN filter_rule = 'empty' THEN 'empty'
       WHEN dedup AND position_in_group > 1 THEN 'exact_duplicate'
       ELSE filter_rule END AS rejected_by,
  CASE WHEN COALESCE(filter_rule, '') <> 'empty' AND dedup AND position_in_group > 1
       THEN group_first_id END AS duplicate_of
FROM grouped
