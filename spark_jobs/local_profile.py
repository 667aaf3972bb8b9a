"""The local profile (conf/spark/local.conf) as a session or a launcher needs it, and the JVM's start.

`python spark_jobs/x.py` reads the profile itself, so it runs the same session as `spark-submit
--properties-file conf/spark/local.conf`: relative paths made absolute against the repository, Delta's
jars resolved once per machine (quietly, in a child process), and the JVM's one start-up line that no user
can act on filtered out of the console.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from contextlib import contextmanager, suppress
from pathlib import Path

from spark_jobs import run_log
from spark_jobs.cli import CONF, REPO, JobError, read_small_text

LOCAL_PROFILE = CONF / "spark" / "local.conf"


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
    run_log.say(f"resolving {', '.join(packages)} from Maven Central into {ivy} (once per machine)")
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


# Printed by the JVM itself (not a logger) because Spark's launcher always adds jdk.incubator.vector.
JVM_START_NOISE = (b"WARNING: Using incubator modules:",)


@contextmanager
def jvm_stderr_filtered():
    """While a local session starts, the JVM it launches gets a stderr that drops `JVM_START_NOISE` and
    passes every other line on to ours, for the JVM's whole life (a thread forwards them); this process's
    own stderr is as before once the block ends. Where file descriptors cannot be swapped (no fd 2, a
    notebook kernel's captured stream), nothing changes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():  # never stops reading while the JVM lives: a full pipe would block the JVM's writes
        out = os.dup(saved)
        with os.fdopen(read_end, "rb", buffering=0) as lines:
            for line in iter(lines.readline, b""):
                if not line.startswith(JVM_START_NOISE):
                    with suppress(OSError):
                        os.write(out, line)

    threading.Thread(target=forward, name="attention-influence-jvm-stderr", daemon=True).start()
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
