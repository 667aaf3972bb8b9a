-- One slice of scores into a scored table that holds nothing a slice replaces (spark_jobs/score.py,
-- write_scores): no row of another scorer, no error row to retry. An insert-only MERGE, which Delta
-- runs as an anti-join and an append; an id is still inserted at most once, also against a
-- concurrent writer (the commit conflicts and is retried).
-- {target}, {source} and {id_col} are identifiers the job checks and backquotes.
MERGE INTO {target} AS t
USING {source} AS s
ON t.{id_col} = s.{id_col}
WHEN NOT MATCHED THEN INSERT *
