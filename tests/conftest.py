"""Shared fixtures: one local SparkSession with Delta for the whole suite, the fixture model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_MODEL = os.environ.get("ATTENTION_INFLUENCE_TEST_MODEL", str(REPO / "fixtures" / "tiny-llama"))

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
# Scoring tasks hand on finished rows every 2 s of work (10 s by default), so a short test task shows
# progress inside it; Python workers inherit this from the JVM the suite starts.
os.environ.setdefault("ATTENTION_INFLUENCE_PART_SECONDS", "2")


@pytest.fixture(scope="session", autouse=True)
def spark_profile(tmp_path_factory) -> Path:
    """The suite's Spark profile (conf/spark/local.conf, two cores, a private catalog and warehouse),
    set for every test, so job subprocesses started by tests use it too."""
    from spark_jobs.local_profile import LOCAL_PROFILE, read_properties

    props = read_properties(LOCAL_PROFILE)
    props.update({
        "spark.master": "local[2]",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Live task metrics (progress inside a task) every 2 s rather than Spark's 10 s.
        "spark.executor.heartbeatInterval": "2s",
    })
    # The suite's catalog is private: an in-memory Derby metastore per JVM (never demo-output/'s,
    # and job subprocesses that inherit this profile do not lock each other out).
    props.update(private_catalog(tmp_path_factory.mktemp("catalog"), in_memory=True))
    conf = tmp_path_factory.mktemp("conf") / "tests.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    os.environ["ATTENTION_INFLUENCE_SPARK_CONF"] = str(conf)
    return conf


@pytest.fixture(scope="session")
def spark(spark_profile):
    """The suite's only SparkSession, on `spark_profile`."""
    from spark_jobs.session import get_spark

    session = get_spark("attention-influence-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def private_catalog(folder: Path, in_memory: bool = False) -> dict[str, str]:
    """Profile settings for a catalog of the tests' own: Derby in `folder` (or in memory), its log there too."""
    url = ("jdbc:derby:memory:attention_influence_tests;create=true" if in_memory
           else f"jdbc:derby:;databaseName={folder / 'metastore_db'};create=true")
    return {
        "spark.hadoop.javax.jdo.option.ConnectionURL": url,
        "spark.sql.warehouse.dir": str(folder / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={REPO / 'conf' / 'spark' / 'log4j2.properties'}"
                                         f" -Dderby.stream.error.file={folder / 'derby.log'}",
    }


@pytest.fixture(scope="session")
def fixture_model() -> str:
    return FIXTURE_MODEL


REAL_MODEL = os.environ.get("ATTENTION_INFLUENCE_REAL_MODEL", str(REPO / "models" / "smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def real_model() -> str:
    """SmolLM2-135M-Instruct converted by `make model` (make test runs it first)."""
    if not (Path(REAL_MODEL) / "config.json").exists():
        pytest.skip(f"real model not found at {REAL_MODEL}: run `make model`")
    return REAL_MODEL
