"""What every job shares: configuration, the Spark session, Delta tables, error exits.

One configuration path: built-in defaults in `conf/<job>.yaml`, then the
file given with `--config`, then flags. Spark settings come from a Spark
properties file (`spark-submit --properties-file`); `python spark_jobs/x.py`
reads `conf/spark/local.conf` itself, so both ways run the same session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
LOCAL_PROFILE = CONF / "spark" / "local.conf"


class JobError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


# ---------------------------------------------------------------- configuration

def parse_flags(job: str, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over `--config FILE` over `conf/<job>.yaml`; unknown keys in a file are an error."""
    parser.add_argument("--config", help="YAML file of job settings (flag names with _), overriding conf/%s.yaml" % job)
    defaults = _read_yaml(CONF / f"{job}.yaml")
    # Only --config is read first (no --help here), so --help shows the defaults the file gives.
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument("--config")
    pre, _ = config_only.parse_known_args(argv)
    if pre.config:
        defaults.update(_read_yaml(Path(pre.config)))
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise JobError(f"unknown setting(s) in configuration: {', '.join(unknown)}")
    parser.set_defaults(**_checked_settings(parser, defaults))
    return parser.parse_args(argv)


MAX_CONFIG_BYTES = 1 << 20  # job settings and Spark profiles are a few lines; anything bigger is a mistake


def read_small_text(path: Path, what: str) -> str:
    """A small UTF-8 text file, or a one-line JobError (missing, a directory, too big, not text)."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise JobError(f"{what} {path} is {size} bytes, more than the {MAX_CONFIG_BYTES} allowed")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise JobError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise JobError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _read_yaml(path: Path) -> dict:
    text = read_small_text(path, "configuration file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise JobError(f"configuration file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise JobError(f"configuration file {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise JobError(f"configuration file {path} must hold a mapping of settings")
    if not all(isinstance(key, str) for key in data):
        raise JobError(f"configuration file {path} has a setting whose name is not text")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _checked_settings(parser: argparse.ArgumentParser, settings: dict) -> dict:
    """Settings from files, shaped like flags: one value each, of the flag's kind.

    argparse converts string defaults with the flag's `type` (a bad one ends in its one-line
    error); everything else is checked here, so a list or a mapping in the wrong place is
    refused before it reaches the job.
    """
    actions = {action.dest: action for action in parser._actions}
    checked = {}
    for key, value in settings.items():
        action = actions[key]
        if value is None:
            checked[key] = None
            continue
        boolean = action.nargs == 0  # store_true / BooleanOptionalAction
        if boolean != isinstance(value, bool) or isinstance(value, (list, dict)):
            kind = "true or false" if boolean else "a single value"
            raise JobError(f"setting {key} must be {kind}, got {type(value).__name__} {str(value)[:60]!r}")
        if not boolean:
            value = str(value)
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise JobError(f"setting {key} must be one of {choices}, got {value[:60]!r}")
        checked[key] = value
    return checked


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse would print the usage first)
        self.exit(2, f"error: {message} (see --help)\n")


def new_parser(description: str) -> argparse.ArgumentParser:
    return _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ---------------------------------------------------------------- Spark session

def read_properties(path: Path) -> dict[str, str]:
    """A Spark properties file (`key value` or `key=value` lines, # comments)."""
    props = {}
    for number, line in enumerate(read_small_text(path, "Spark properties file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        match = re.match(r"([^\s=:]+)\s*[\s=:]\s*(.*)$", line)
        if not match:
            raise JobError(f"Spark properties file {path}, line {number}: expected 'key value', got {line[:60]!r}")
        props[match.group(1)] = match.group(2).strip()
    return props


def get_spark(app_name: str):
    """The running session (notebook, spark-submit), else a local one with Delta from conf/spark/local.conf."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its properties file rules
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        spark.sparkContext.setLogLevel(os.environ.get("ATTENTION_INFLUENCE_LOG_LEVEL", "WARN"))
        return spark

    from delta import configure_spark_with_delta_pip

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    props = read_properties(Path(os.environ.get("ATTENTION_INFLUENCE_SPARK_CONF", LOCAL_PROFILE)))
    packages = props.pop("spark.jars.packages", "")
    for key, value in props.items():
        builder = builder.config(key, value)
    extra = [p for p in packages.split(",") if p and not p.startswith("io.delta:")]
    spark = configure_spark_with_delta_pip(builder, extra_packages=extra).getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("ATTENTION_INFLUENCE_LOG_LEVEL", "WARN"))
    return spark


# ---------------------------------------------------------------- Delta tables

def is_path(ref: str) -> bool:
    """SPEC §1: a table argument with '/' is a Delta path, otherwise a catalog name."""
    return "/" in ref


# A catalog table name: one to three dot-separated parts, each plain ([A-Za-z0-9_]) or backquoted
# (a doubled backquote inside). Anything else (a space, a semicolon, a stray backquote) is refused
# before the name reaches Spark, so a flag can never add SQL to a statement.
_NAME_PART = r"(?:[A-Za-z0-9_]+|`(?:[^`]|``)+`)"
TABLE_NAME = re.compile(rf"{_NAME_PART}(?:\.{_NAME_PART}){{0,2}}")


def check_table_name(ref: str) -> str:
    if not is_path(ref) and not TABLE_NAME.fullmatch(ref):
        raise JobError(f"not a valid table name: {ref[:80]!r} (use db.table, `quoted` parts, or a path with '/')")
    return ref


def table_exists(spark, ref: str) -> bool:
    from delta.tables import DeltaTable

    check_table_name(ref)
    if is_path(ref):
        return DeltaTable.isDeltaTable(spark, ref)
    return spark.catalog.tableExists(ref)


def read_table(spark, ref: str):
    if not table_exists(spark, ref):
        raise JobError(f"table not found: {ref}" + (" (not a Delta table)" if is_path(ref) and Path(ref).exists() else ""))
    return spark.read.format("delta").load(ref) if is_path(ref) else spark.table(ref)


def delta_table(spark, ref: str):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, ref) if is_path(ref) else DeltaTable.forName(spark, ref)


def create_table(df, ref: str, properties: dict[str, str] | None = None) -> None:
    """Create a Delta table (one commit); fails if another writer created it first."""
    writer = df.writeTo(_v2_name(ref)).using("delta")
    for key, value in (properties or {}).items():
        writer = writer.tableProperty(key, value)
    writer.create()


def replace_table(df, ref: str, properties: dict[str, str] | None = None) -> None:
    """Create or atomically replace a Delta table (one commit) with the given properties."""
    writer = df.writeTo(_v2_name(ref)).using("delta")
    for key, value in (properties or {}).items():
        writer = writer.tableProperty(key, value)
    writer.createOrReplace()


def quote_identifier(name: str) -> str:
    """A column name as a backquoted identifier (for Column references, not SQL text)."""
    return "`" + name.replace("`", "``") + "`"


def _v2_name(ref: str) -> str:
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
    spark.sql(f"ALTER TABLE {_v2_name(ref)} SET TBLPROPERTIES ({pairs})")


def table_properties(spark, ref: str) -> dict[str, str]:
    return dict(delta_table(spark, ref).detail().select("properties").first()[0] or {})


# ---------------------------------------------------------------- running a job

def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a job's main; user errors become one line on stderr and exit code 2."""
    from attention_influence.loading import ModelLoadError

    try:
        return main(argv) or 0
    except (JobError, ModelLoadError, ValueError) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # Spark's analysis errors for missing tables/columns are user errors too
        name = type(exc).__name__
        if name in {"AnalysisException", "IllegalArgumentException", "ParseException"}:
            print(f"error: {first_line(exc)}", file=sys.stderr)
            return 2
        traceback.print_exc()
        return 1


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
