-- One slice of scores into the scored table (spark_jobs/score.py, write_scores).
-- {target}, {source} and {id_col} are identifiers the job checks and backquotes (SQL takes no
-- parameter for a table or column); the only value, :retry_errors, is a named parameter.
-- A row already scored by this scorer stays; a row of another scorer (or, with --retry-errors,
-- an error row) is replaced; a new id is inserted once.
MERGE INTO {target} AS t
USING {source} AS s
ON t.{id_col} = s.{id_col}
WHEN MATCHED AND (t.scorer <> s.scorer OR (:retry_errors AND t.status = 'error')) THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
