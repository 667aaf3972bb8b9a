"""Tables by reference: a Delta path or a catalog name, read, written, described and registered.

SPEC §1: a table argument with '/' is a Delta path, anything else a catalog name (`db.table`,
`catalog.db.table`), checked here once before it reaches any SQL text. Below, the names the jobs share
through those tables: score.py writes the columns and properties, select.py, probe.py and the notebooks
read them back, so each key is spelled once (the score columns themselves are the UDF's:
`udfs.influence.SCORE_COLUMNS`, `TOKEN_LOSS_COLUMNS`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from spark_jobs.cli import JobError, is_path
from spark_jobs.session import is_connect

# A catalog table name: one to three dot-separated parts, each plain ([A-Za-z0-9_]) or backquoted
# (a doubled backquote inside). Anything else (a space, a semicolon, a stray backquote) is refused
# before the name reaches Spark, so a flag can never add SQL to a statement.
_NAME_PART = r"(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`]|``)+`)"
TABLE_NAME = re.compile(rf"{_NAME_PART}(?:\.{_NAME_PART}){{0,2}}")


def check_table_name(ref: str) -> str:
    """`ref` itself when it is a path or a well-formed catalog name (the one validator of names), else a JobError."""
    if not is_path(ref) and not TABLE_NAME.fullmatch(ref):
        raise JobError(f"not a valid table name: {ref[:80]!r} (use db.table, `quoted` parts, or a path with '/')")
    return ref


def table_exists(spark, ref: str) -> bool:
    check_table_name(ref)
    return is_delta_path(spark, ref) if is_path(ref) else spark.catalog.tableExists(ref)


def is_delta_path(spark, path: str) -> bool:
    """Whether a Delta table lives at `path`: Delta's own test on a classic session; on Spark Connect (whose
    DeltaTable API needs Delta Connect's server plugin) from DESCRIBE DETAIL, plain SQL."""
    if not is_connect(spark):
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, path)
    try:
        return table_detail(spark, path)["format"] == "delta"
    except Exception as exc:  # noqa: BLE001 - only "no Delta table there" means False
        text = str(exc)
        if any(marker in text for marker in ("DELTA_MISSING_DELTA_TABLE", "DELTA_PATH_DOES_NOT_EXIST",
                                             "is not a Delta table", "doesn't exist", "does not exist",
                                             "DELTA_TABLE_NOT_FOUND", "PATH_NOT_FOUND")):
            return False
        raise


def read_table(spark, ref: str):
    if not table_exists(spark, ref):
        raise JobError(f"table not found: {ref}" + (" (not a Delta table)" if is_path(ref) and Path(ref).exists() else ""))
    return spark.read.format("delta").load(ref) if is_path(ref) else spark.table(ref)


def write_table(df, ref: str, properties: dict[str, str] | None = None, replace: bool = True) -> None:
    """Create, or with `replace` create or atomically replace, a Delta table (one commit) with `properties`;
    without `replace` it fails if another writer created it first."""
    writer = df.writeTo(v2_name(ref)).using("delta")
    for key, value in (properties or {}).items():
        writer = writer.tableProperty(key, value)
    writer.createOrReplace() if replace else writer.create()


def data_file_name(path: str) -> str:
    """A Delta data file by its name alone: Delta names each file uniquely, and the same file reaches the job
    with different prefixes (`file:`, an absolute path) from `inputFiles()`, `_metadata` and `input_file_name()`."""
    return path.rsplit("/", 1)[-1]


def quote_identifier(name: str) -> str:
    """A column name as a backquoted identifier (for Column references, not SQL text)."""
    return "`" + name.replace("`", "``") + "`"


def v2_name(ref: str) -> str:
    """A table reference for SQL text: delta.`/abs/path` or the checked catalog name."""
    if is_path(ref):
        return "delta.`" + os.path.abspath(ref).replace("`", "``") + "`"
    return check_table_name(ref)


def _sql_string(value: str) -> str:
    """A Spark SQL string literal. Only for TBLPROPERTIES, where Spark accepts no parameter markers."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_table_properties(spark, ref: str, properties: dict[str, str]) -> None:
    """ALTER TABLE ... SET TBLPROPERTIES. Spark refuses parameter markers (and IDENTIFIER(:x))
    in this statement, so names and values are quoted here, never pasted raw."""
    if not properties:
        return
    pairs = ", ".join(f"{_sql_string(k)} = {_sql_string(v)}" for k, v in properties.items())
    spark.sql(f"ALTER TABLE {v2_name(ref)} SET TBLPROPERTIES ({pairs})")


def table_properties(spark, ref: str) -> dict[str, str]:
    return dict(table_detail(spark, ref)["properties"] or {})


def table_detail(spark, ref: str):
    """DESCRIBE DETAIL's one row (format, location, numFiles, properties, ...): SQL, so any session can ask."""
    return spark.sql(f"DESCRIBE DETAIL {v2_name(ref)}").first()


def name_parts(name: str) -> list[str]:
    """The parts of a checked catalog name, unquoted (`a``b`.c -> ['a`b', 'c'])."""
    check_table_name(name)
    if is_path(name):
        raise JobError(f"not a table name: {name!r} (a path)")
    return [part[1:-1].replace("``", "`") if part.startswith("`") else part
            for part in re.findall(_NAME_PART, name)]


def catalog_name(name: str) -> str:
    """A catalog name checked (`check_table_name`) and backquoted part by part for SQL text."""
    return ".".join(quote_identifier(part) for part in name_parts(name))


def register_delta_table(spark, name: str, path: str) -> str:
    """Register the Delta table at `path` as the external catalog table `name`; the data stays where it is.

    Returns what happened: `created`, `unchanged` (already registered there) or `replaced`
    (registered elsewhere before; only an external table is re-pointed, its old data is not touched).
    CREATE TABLE takes no parameter marker for LOCATION (nor IDENTIFIER(:x) under Delta's parser,
    delta-io/delta#7640), so the name is validated and backquoted and the location is a quoted
    string literal (`_sql_string`), never pasted raw.
    """
    quoted = catalog_name(name)
    parts = name_parts(name)
    location = os.path.abspath(path)
    if not table_exists(spark, location):
        raise JobError(f"not a Delta table: {path}")
    # Hive's metastore logs a stack trace at ERROR for CREATE DATABASE IF NOT EXISTS on an existing one: ask first.
    if len(parts) > 1 and not spark.catalog.databaseExists(".".join(parts[:-1])):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {'.'.join(quote_identifier(part) for part in parts[:-1])}")
    outcome = "created"
    if spark.catalog.tableExists(name):
        described = {row[0]: row[1] for row in spark.sql(f"DESCRIBE TABLE EXTENDED {quoted}").collect()}
        current = (described.get("Location") or "").removeprefix("file:")
        if os.path.abspath(current) == location:
            return "unchanged"
        if (described.get("Type") or "").upper() != "EXTERNAL":
            raise JobError(f"{name} is a managed table at {current}; drop it first to register {path}")
        spark.sql(f"DROP TABLE {quoted}")
        outcome = "replaced"
    spark.sql(f"CREATE TABLE {quoted} USING DELTA LOCATION {_sql_string(location)}")
    return outcome


# Columns score.py adds to the UDF's output.
SCORER_COLUMN = "scorer"        # fingerprint of everything that changes a score
SCORED_AT_COLUMN = "scored_at"  # when the row was scored
ADDED_COLUMNS = (SCORER_COLUMN, SCORED_AT_COLUMN)

# Table properties (TBLPROPERTIES) the jobs record for provenance.
PROPERTY_PREFIX = "attention_influence."
SCORER = PROPERTY_PREFIX + "scorer"
SCORER_CONFIG = PROPERTY_PREFIX + "scorer_config"
ID_COL = PROPERTY_PREFIX + "id_col"
DOMAIN_COL = PROPERTY_PREFIX + "domain_col"
INPUT = PROPERTY_PREFIX + "input"  # the documents score.py read: select.py joins back columns not carried
MODEL = PROPERTY_PREFIX + "model"
MODEL_REVISION = PROPERTY_PREFIX + "model_revision"
TOP_FRACTION = PROPERTY_PREFIX + "top_fraction"
SAMPLES = PROPERTY_PREFIX + "samples"
CONTEXT_TOKENS = PROPERTY_PREFIX + "context_tokens"
