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
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from attention_influence.errors import first_line

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
LOCAL_PROFILE = CONF / "spark" / "local.conf"


class JobError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


# ---------------------------------------------------------------- configuration

def parse_flags(job: str, parser: argparse.ArgumentParser, argv: list[str] | None = None,
                settings: dict | None = None) -> argparse.Namespace:
    """Flags over `--config FILE` over `settings` over `conf/<job>.yaml`; unknown keys are an error.

    `settings` is how a notebook passes its widgets: checked and converted like a config file's.
    """
    parser.add_argument("--config", help="YAML file of job settings (flag names with _), overriding conf/%s.yaml" % job)
    defaults = _read_yaml(CONF / f"{job}.yaml")
    defaults.update({key.replace("-", "_"): value for key, value in (settings or {}).items()})
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


Options = TypeVar("Options")


def options_from(options_type: type[Options], namespace: argparse.Namespace, required: tuple[str, ...] = ()) -> Options:
    """A job's frozen options from its parsed flags; a missing required one is a JobError naming the flag.

    Every flag must be a field (and the reverse), so the parser and the options cannot drift apart.
    """
    names = {field.name for field in fields(options_type)}
    given = {key: value for key, value in vars(namespace).items() if key != "config"}
    if set(given) != names:
        raise TypeError(f"{options_type.__name__} and its flags differ: {sorted(set(given) ^ names)}")
    for name in required:
        if given[name] in (None, ""):
            raise JobError(f"--{name.replace('_', '-')} is required")
    for name in LOCAL_PATH_OPTIONS:
        value = given.get(name)
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value \
                and os.path.exists(value):
            given[name] = os.path.abspath(value)
    return options_type(**given)


# A relative local path here means the driver's working directory; executors (and a Spark Connect
# server's Python workers) run elsewhere, where it would fall through to a hub lookup: made absolute.
LOCAL_PATH_OPTIONS = ("model", "heads")


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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
    """The running session (notebook, spark-submit), else a new one: a Spark Connect session when
    SPARK_REMOTE is set (`sc://host:15002`, or `local[N]` for a local Connect server with Delta from
    conf/spark/local.conf), else a classic local one from conf/spark/local.conf."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    remote = os.environ.get("SPARK_REMOTE")
    if remote:
        return connect_session(remote, app_name)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its properties file rules
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        set_log_level(spark)
        return spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    for key, value in local_properties().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    set_log_level(spark)
    return spark


def connect_session(remote: str, app_name: str = "attention-influence"):
    """A Spark Connect session. `sc://...` is a running server, configured by whoever runs it; `local[N]`
    starts one in this process with the local profile's settings (Delta's extension and catalog)."""
    import warnings

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote).appName(app_name)
    if remote.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for key, value in local_properties().items():
            if key != "spark.master":  # the server's master is `remote` itself
                builder = builder.config(key, value)
        builder = builder.config("spark.connect.grpc.binding.address", "127.0.0.1")  # this machine only
    with warnings.catch_warnings():
        # The client sets the same settings again on its session once the local server runs; the
        # server's static ones (extensions, jars, memory) are refused there with a warning each.
        warnings.filterwarnings("ignore", message="Failed to set ")
        return builder.getOrCreate()


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session (no SparkContext, JVM or accumulators on this side).
    The one place the jobs ask; everything that differs between the two kinds of session branches on it."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # pyspark without its connect extra: only classic sessions exist
        return False
    return isinstance(spark, ConnectSession)


def set_log_level(spark) -> None:
    """Spark's log level from ATTENTION_INFLUENCE_LOG_LEVEL (WARN): a classic session's driver log;
    a Connect server's log is its operator's."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(os.environ.get("ATTENTION_INFLUENCE_LOG_LEVEL", "WARN"))


def default_parallelism(spark) -> int:
    """Task slots (cores) of the session's cluster: the SparkContext's on a classic session; on Spark
    Connect from the configuration (spark.default.parallelism, a local[N] master, or executors x cores),
    else spark.sql.shuffle.partitions."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)

    def setting(key: str) -> str | None:
        try:
            return spark.conf.get(key, None)
        except Exception:  # noqa: BLE001 - a server may refuse to show some settings
            return None

    explicit = setting("spark.default.parallelism")
    if explicit and explicit.isdigit():
        return int(explicit)
    master = setting("spark.master") or ""
    match = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master)
    if match:  # local = 1 core, local[N], local[*] = every core here
        cores = match.group(1)
        return 1 if cores is None else (os.cpu_count() or 1) if cores == "*" else int(cores)
    executors, cores = setting("spark.executor.instances"), setting("spark.executor.cores")
    if executors and cores and executors.isdigit() and cores.isdigit():
        return int(executors) * int(cores)
    shuffle = setting("spark.sql.shuffle.partitions") or "200"
    return int(shuffle) if shuffle.isdigit() else 200


def profile_path() -> Path:
    return Path(os.environ.get("ATTENTION_INFLUENCE_SPARK_CONF", LOCAL_PROFILE))


def local_properties(profile: Path | None = None) -> dict[str, str]:
    """The profile's properties as a local session (or a launcher) needs them.

    Relative paths (Ivy settings, log4j configuration, the Derby metastore and warehouse of the
    local catalog) are made absolute against the repository root, so a job runs the same from any
    directory. Delta's jars (the installed delta-spark's coordinate) are resolved once per machine,
    quietly, into the Ivy cache of `spark.jars.ivy`, and handed to Spark as `spark.jars`: a session
    then starts without printing Ivy's resolution report.
    """
    props = resolve_relative_paths(read_properties(profile or profile_path()))
    packages = [p for p in props.pop("spark.jars.packages", "").split(",") if p and not p.startswith("io.delta:")]
    packages.insert(0, delta_coordinate())
    jars = resolve_jars(packages, props)
    props.pop("spark.jars.ivySettings", None)  # used by the resolution only; Spark would print that it loads it
    props["spark.jars"] = ",".join(filter(None, [props.get("spark.jars", "")] + jars))
    for target in _local_files(props):
        target.parent.mkdir(parents=True, exist_ok=True)
    return props


def delta_coordinate() -> str:
    """The Maven coordinate of the Delta jar that matches the installed delta-spark and pyspark."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


_JAVA_PATH_OPTIONS = ("log4j2.configurationFile", "derby.stream.error.file")


def resolve_relative_paths(props: dict[str, str], base: Path = REPO) -> dict[str, str]:
    """Relative file paths of a profile made absolute against `base` (properties files cannot say ~ or $PWD)."""
    def absolute(path: str) -> str:
        return path if not path or os.path.isabs(path) or "://" in path else str(base / path)

    out = dict(props)
    for key in ("spark.jars.ivySettings", "spark.jars.ivy", "spark.sql.warehouse.dir"):
        if key in out:
            out[key] = absolute(out[key])
    url = out.get("spark.hadoop.javax.jdo.option.ConnectionURL")
    if url:
        out["spark.hadoop.javax.jdo.option.ConnectionURL"] = re.sub(
            r"(databaseName=)([^;]+)", lambda m: m.group(1) + absolute(m.group(2)), url)
    for key in ("spark.driver.extraJavaOptions",):
        if key in out:
            out[key] = re.sub(r"(-D(?:%s)=)(\S+)" % "|".join(map(re.escape, _JAVA_PATH_OPTIONS)),
                              lambda m: m.group(1) + absolute(m.group(2)), out[key])
    return out


def _local_files(props: dict[str, str]) -> list[Path]:
    """Files the session writes (Derby's log and database): their folders must exist first."""
    found = []
    match = re.search(r"-Dderby\.stream\.error\.file=(\S+)", props.get("spark.driver.extraJavaOptions", ""))
    if match:
        found.append(Path(match.group(1)))
    match = re.search(r"databaseName=([^;]+)", props.get("spark.hadoop.javax.jdo.option.ConnectionURL", ""))
    if match and not match.group(1).startswith("memory:"):
        found.append(Path(match.group(1)))
    return [p for p in found if p.is_absolute()]


_RESOLVE_JARS = """
import sys
from pyspark.sql import SparkSession
packages, ivy, settings = sys.argv[1:4]
builder = (SparkSession.builder.master("local[1]").appName("attention-influence-resolve-jars")
           .config("spark.ui.enabled", "false").config("spark.jars.packages", packages))
if ivy:
    builder = builder.config("spark.jars.ivy", ivy)
if settings:
    builder = builder.config("spark.jars.ivySettings", settings)
spark = builder.getOrCreate()
print("JARS=" + spark.sparkContext.getConf().get("spark.jars", ""))
spark.stop()
"""


def resolve_jars(packages: list[str], props: dict[str, str]) -> list[str]:
    """Local jar files of `packages` (with their dependencies), resolved once per machine.

    The first call runs Spark's own resolution (spark.jars.packages with the profile's Ivy
    settings and cache) in a child process whose output goes to attention-influence-resolve.log
    in the Ivy directory, not the console; the list of jars is remembered there too and reused
    while every file is still there.
    """
    import hashlib

    ivy = props.get("spark.jars.ivy") or str(Path.home() / ".ivy2.5.2")
    settings = props.get("spark.jars.ivySettings", "")
    digest_of = Path(settings).read_bytes() if settings and Path(settings).exists() else b""
    key = hashlib.sha256("\n".join(packages).encode() + digest_of).hexdigest()[:16]
    record = Path(ivy) / f"attention-influence-jars-{key}.txt"
    if record.exists():
        jars = record.read_text().split()
        if jars and all(Path(re.sub(r"^file:(//)?", "", j)).exists() for j in jars):
            return jars
    print(f"resolving {', '.join(packages)} from Maven Central into {ivy} (once per machine)",
          file=sys.stderr, flush=True)
    import subprocess

    env = dict(os.environ, PYSPARK_SUBMIT_ARGS="pyspark-shell")
    env.pop("PYSPARK_GATEWAY_PORT", None)
    result = subprocess.run([sys.executable, "-c", _RESOLVE_JARS, ",".join(packages), ivy, settings],
                            capture_output=True, text=True, env=env, timeout=1800)
    lines = [line for line in result.stdout.splitlines() if line.startswith("JARS=")]
    log = Path(ivy) / "attention-influence-resolve.log"  # Ivy's report, for when something is wrong
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode or not lines:
        tail = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()][-5:]
        raise JobError(f"could not resolve {', '.join(packages)} (settings {settings or 'Spark default'}): "
                       + " | ".join(tail))
    jars = [j for j in lines[-1][len("JARS="):].split(",") if j]
    partial = record.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: never half a list
    partial.write_text("\n".join(jars) + "\n")
    partial.replace(record)
    return jars


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
    check_table_name(ref)
    if not is_path(ref):
        return spark.catalog.tableExists(ref)
    if not is_connect(spark):
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(spark, ref)
    # Spark Connect: the DeltaTable API needs Delta Connect's server plugin; DESCRIBE DETAIL is plain SQL.
    try:
        return table_detail(spark, ref)["format"] == "delta"
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


def create_table(df, ref: str, properties: dict[str, str] | None = None) -> None:
    """Create a Delta table (one commit); fails if another writer created it first."""
    writer = df.writeTo(v2_name(ref)).using("delta")
    for key, value in (properties or {}).items():
        writer = writer.tableProperty(key, value)
    writer.create()


def replace_table(df, ref: str, properties: dict[str, str] | None = None) -> None:
    """Create or atomically replace a Delta table (one commit) with the given properties."""
    writer = df.writeTo(v2_name(ref)).using("delta")
    for key, value in (properties or {}).items():
        writer = writer.tableProperty(key, value)
    writer.createOrReplace()


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


@contextmanager
def session_setting(spark, key: str, value: str):
    """`key` set to `value` while the block runs, then as it was: a job leaves a session it was
    handed (a notebook's) the way it found it."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


@contextmanager
def session_settings(spark, settings: dict[str, str]):
    """`session_setting` for each of `settings`."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        for key, value in settings.items():
            stack.enter_context(session_setting(spark, key, value))
        yield


CONSTANT_PARAMETERS = "spark.sql.legacy.parameterSubstitution.constantsOnly"


def run_sql(spark, text: str, params: dict | None = None):
    """`spark.sql(text, args=params)` with named parameters (`:name`), on either kind of session.

    Classic: Spark binds them, as constants (Delta's SQL parser drops named parameters on Spark >= 4.1,
    delta-io/delta#7640; conf/spark/local.conf). Spark Connect: there every parameterised statement
    failed with UNBOUND_SQL_PARAMETER (pyspark 4.2.0, delta-spark 4.4.0, whatever constantsOnly says),
    so they are bound here (`bind_parameters`): only booleans and numbers, as typed SQL literals.
    """
    if not params:
        return spark.sql(text)
    if is_connect(spark):
        return spark.sql(bind_parameters(text, params))
    with session_setting(spark, CONSTANT_PARAMETERS, "true"):
        return spark.sql(text, args=params)


_SQL_TOKENS = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/|::|:([A-Za-z_][A-Za-z0-9_]*)""",
                         re.DOTALL)


def sql_literal(value) -> str:
    """A bool, int or finite float as a typed Spark SQL literal; anything else is refused (no text
    value is ever pasted into SQL)."""
    import math

    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"{value}L"
    if isinstance(value, float) and math.isfinite(value):
        return f"{value!r}D"
    raise TypeError(f"only booleans and numbers are bound as SQL literals, got {type(value).__name__}")


def bind_parameters(text: str, params: dict) -> str:
    """`text` with each `:name` outside quotes and comments replaced by `sql_literal(params[name])`."""
    literals = {name: sql_literal(value) for name, value in params.items()}

    def replace(match):
        name = match.group(1)
        if name is None:
            return match.group(0)
        if name not in literals:
            raise JobError(f"SQL parameter :{name} has no value")
        return literals[name]

    return _SQL_TOKENS.sub(replace, text)


# ---------------------------------------------------------------- catalog

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}$")


def catalog_name(name: str) -> str:
    """`db.table` (or `table`, `catalog.db.table`) checked part by part and backquoted for SQL text.

    Only plain identifiers pass (letters, digits, underscore), so the quoted name can never
    close its quotes or carry SQL; anything else is a user error.
    """
    parts = name.split(".")
    if not 1 <= len(parts) <= 3 or not all(_IDENTIFIER.match(part) for part in parts):
        raise JobError(f"not a table name: {name!r} (expected db.table of letters, digits and _)")
    return ".".join(f"`{part}`" for part in parts)


def register_delta_table(spark, name: str, path: str) -> str:
    """Register the Delta table at `path` as the external catalog table `name`; the data stays where it is.

    Returns what happened: `created`, `unchanged` (already registered there) or `replaced`
    (registered elsewhere before; only an external table is re-pointed, its old data is not touched).
    CREATE TABLE takes no parameter marker for LOCATION (nor IDENTIFIER(:x) under Delta's parser,
    delta-io/delta#7640), so the name is validated and backquoted and the location is a quoted
    string literal (`_sql_string`), never pasted raw.
    """
    quoted = catalog_name(name)
    location = os.path.abspath(path)
    if not table_exists(spark, location):
        raise JobError(f"not a Delta table: {path}")
    parts = name.split(".")
    # Hive's metastore logs a stack trace at ERROR for CREATE DATABASE IF NOT EXISTS on an existing one: ask first.
    if len(parts) > 1 and not spark.catalog.databaseExists(".".join(parts[:-1])):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {'.'.join(quoted.split('.')[:-1])}")
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


# ---------------------------------------------------------------- running a job

COMMIT_CONFLICT_EXIT = 3
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped on request (SIGTERM, Ctrl-C), what was committed is consistent; rerun


class Stopped(Exception):
    """A run stopped on request after committing what it had: one line on stderr and exit code 75."""


class CommitConflict(Exception):
    """Concurrent writers kept winning: one line on stderr and exit code 3, so that a rerun completes."""


def stage_failure_reason(exc: BaseException) -> str | None:
    """One line for a job Spark aborted after a task failed `spark.task.maxFailures` times."""
    match = re.search(r"Task (\d+) in stage ([\d.]+) failed (\d+) times?, most recent failure: (.*)", str(exc))
    if not match:
        return None
    cause = re.sub(r"^Lost task \S+ in stage \S+ \([^)]*\) \([^)]*\): ", "", match.group(4).strip())
    return (f"scoring task for partition {match.group(1)} (stage {match.group(2)}) failed {match.group(3)} times; "
            f"the run was aborted; slices committed before it stay, this slice was not committed (rerun to resume): "
            f"{cause[:300]}")


# Core parameters that jobs expose as flags of the same name: the core's messages name the parameter.
FLAG_PARAMETERS = ("context_tokens", "top_fraction", "samples", "trust_remote_code", "allow_pickle_weights")


def in_flag_words(message: str) -> str:
    """The core names its parameters (`trust_remote_code`); a user of a job knows them as flags."""
    return re.sub(r"\b(" + "|".join(FLAG_PARAMETERS) + r")\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a job's main, the one place exit codes come from: user errors one line on stderr and 2,
    a commit lost to concurrent writers 3, a task that failed every retry 1, a stop on request 75
    (each one line)."""
    from attention_influence.loading import ModelLoadError

    try:
        try:
            return main(argv) or 0
        except CommitConflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return COMMIT_CONFLICT_EXIT
        except Stopped as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return STOPPED_EXIT
        except Exception as exc:  # noqa: BLE001 - anything else goes on to the handlers below
            reason = stage_failure_reason(exc)
            if reason is None:
                raise
            print(f"error: {reason}", file=sys.stderr)
            return 1
    except JobError as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {in_flag_words(first_line(exc))}", file=sys.stderr)
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


def dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
