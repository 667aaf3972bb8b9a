"""The Spark session a job runs in, and every difference between a classic session and Spark Connect.

A job asks for its session with `get_spark`; whatever it does that a classic session and a Connect
session do differently (logs, parallelism, parameterised SQL, freeing cached rows, deleting files,
testing for a Delta table) is a function here, so the jobs themselves never branch on the kind.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import ExitStack, contextmanager, suppress

from spark_jobs import local_catalog
from spark_jobs.cli import JobError
from spark_jobs.local_profile import jvm_stderr_filtered, local_properties


def get_spark(app_name: str, table_refs: tuple[str, ...] | list[str] | None = None):
    """The running session (notebook, spark-submit), else a new one: a Spark Connect session when
    SPARK_REMOTE is set (`sc://host:15002`, or `local[N]` for a local Connect server with Delta from
    conf/spark/local.conf), else a classic local one from conf/spark/local.conf.

    `table_refs`: the tables the job names. A job that names only Delta paths gets Spark's in-memory
    catalog on a session it starts, so it never boots the local catalog another process may hold;
    otherwise the local catalog is waited for while another process holds it (`local_catalog`).
    None: the job may name tables it does not know yet (a notebook, spark-sql).
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    catalog = local_catalog.Choice.for_tables(table_refs)
    remote = os.environ.get("SPARK_REMOTE")
    if remote:
        return connect_session(remote, app_name, catalog)
    builder = SparkSession.builder.appName(app_name)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its properties file rules
        for key, value in catalog.properties({}).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        set_log_level(spark)
        return spark

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    props = catalog.properties(local_properties())
    for key, value in props.items():
        builder = builder.config(key, value)
    catalog.wait_until_free(props)
    with jvm_stderr_filtered():
        spark = builder.getOrCreate()
    set_log_level(spark)
    return spark


def connect_session(remote: str, app_name: str = "attention-influence", catalog=None):
    """A Spark Connect session. `sc://...` is a running server, configured by whoever runs it; `local[N]`
    starts one in this process with the local profile's settings (Delta's extension and catalog)."""
    import warnings

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote).appName(app_name)
    if remote.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        catalog = catalog or local_catalog.Choice.for_tables(None)
        props = catalog.properties(local_properties())
        for key, value in props.items():
            if key != "spark.master":  # the server's master is `remote` itself
                builder = builder.config(key, value)
        builder = builder.config("spark.connect.grpc.binding.address", "127.0.0.1")  # this machine only
        catalog.wait_until_free(props)
    with warnings.catch_warnings(), jvm_stderr_filtered():
        # The client sets the same settings again on its session once the local server runs; the
        # server's static ones (extensions, jars, memory) are refused there with a warning each.
        warnings.filterwarnings("ignore", message="Failed to set ")
        return builder.getOrCreate()


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session (no SparkContext, JVM or accumulators on this side)."""
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


def is_local_master(spark) -> bool:
    """Whether the executors are this process's (local[...]): their stderr is then the user's console."""
    try:
        master = spark.conf.get("spark.master", "") or ""
    except Exception:  # noqa: BLE001 - a Connect server may not show it: its executors' output is not ours
        return False
    return master.startswith("local")


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


def release(df) -> None:
    """Free a checkpointed DataFrame's rows now rather than at the JVM's next garbage collection (a classic
    session; on Spark Connect the server's cleaner frees them)."""
    if is_connect(df.sparkSession):
        return
    with suppress(Exception):  # already gone: Spark's cleaner frees them
        df._jdf.queryExecution().analyzed().rdd().unpersist(False)


def delete_path(spark, path: str) -> None:
    """Delete a folder: Hadoop's file system (any scheme) on a classic session; on Spark Connect, which has
    no file API, a local path from here, else a JobError saying so."""
    if is_connect(spark):
        local = path.removeprefix("file:") if "://" not in path or path.startswith("file:") else None
        if local is None or not os.path.exists(local):
            raise JobError("Spark Connect has no file API for it; delete it with your storage's tools")
        import shutil

        shutil.rmtree(local)
        return
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)


@contextmanager
def loggers_off(spark, names: tuple[str, ...]):
    """Spark's loggers `names` off while the block runs, then as they were: a classic session's driver log
    (a Connect server's log is its operator's; nothing changes there)."""
    levels = {}
    configurator = None
    if not is_connect(spark):
        with suppress(Exception):  # another logging backend: leave it alone
            jvm = spark.sparkContext._jvm
            configurator = jvm.org.apache.logging.log4j.core.config.Configurator
            for name in names:
                levels[name] = jvm.org.apache.logging.log4j.LogManager.getLogger(name).getLevel()
                configurator.setLevel(name, jvm.org.apache.logging.log4j.Level.OFF)
    try:
        yield
    finally:
        for name, level in levels.items():
            with suppress(Exception):
                configurator.setLevel(name, level)


def task_slots(spark) -> int:
    """Task slots of the cluster: cores, or GPUs where a task takes a whole GPU (conf/spark/gpu.conf sets
    spark.task.cpus to the executor's cores, so there is one slot per executor and GPU)."""
    task_cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    return max(1, default_parallelism(spark) // max(1, task_cpus))
