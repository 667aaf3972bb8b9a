"""Quiet start-up: Delta's jars from Maven Central only (conf/spark/ivysettings.xml), resolved once
per machine, Spark's own log at WARN, so a job prints its own lines and little else."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spark_jobs.local_profile import local_properties, read_properties, resolve_relative_paths
from tests.conftest import REPO, private_catalog

pytestmark = pytest.mark.slow

NOISE = ("spark-packages", "not found", ":: resolving", ":: loading settings", "resolution report", "found io.delta",
         "Using Spark's default log4j profile", "Setting default log level", "[Stage ")


def test_profile_paths_resolve_from_the_repository_root():
    props = resolve_relative_paths(read_properties(REPO / "conf" / "spark" / "local.conf"))
    assert props["spark.jars.ivySettings"] == str(REPO / "conf" / "spark" / "ivysettings.xml")
    assert f"-Dlog4j2.configurationFile={REPO / 'conf' / 'spark' / 'log4j2.properties'}" \
        in props["spark.driver.extraJavaOptions"]
    assert f"databaseName={REPO / 'demo-output' / 'metastore_db'};" in props["spark.hadoop.javax.jdo.option.ConnectionURL"]
    assert props["spark.sql.warehouse.dir"] == str(REPO / "demo-output" / "spark-warehouse")
    assert props["spark.jars.ivy"] == "/tmp/attention-influence-ivy"  # absolute paths stay


def test_a_job_with_an_empty_ivy_cache_prints_its_own_lines(tmp_path):
    """Downloads Delta's jars from Maven Central once into an empty cache (the suite's first start)."""
    ivy = tmp_path / "ivy"
    props = read_properties(REPO / "conf" / "spark" / "local.conf")
    props.update(private_catalog(tmp_path / "catalog"))
    props.update({"spark.jars.ivy": str(ivy), "spark.master": "local[1]", "spark.ui.enabled": "false",
                  "spark.sql.shuffle.partitions": "1"})
    profile = tmp_path / "profile.conf"
    profile.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    env = dict(os.environ, ATTENTION_INFLUENCE_SPARK_CONF=str(profile))
    result = subprocess.run([sys.executable, str(REPO / "spark_jobs" / "build_corpus.py"), "--output",
                             tmp_path / "corpus", "--per-domain", "2"],
                            capture_output=True, text=True, env=env, timeout=1200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = (result.stdout + result.stderr).splitlines()
    assert not [line for line in output if any(n in line for n in NOISE)], output
    assert result.stdout.splitlines() == ["wrote 6 documents (code: 2, legal: 2, prose: 2) to "
                                          f"{tmp_path / 'corpus'}"]
    assert len(output) <= 4, output  # the job's line, the one-time resolution line, the JVM's own notice
    resolve_log = (ivy / "attention-influence-resolve.log").read_text()
    assert "found io.delta#delta-spark" in resolve_log and "in central" in resolve_log
    assert "spark-packages" not in resolve_log and "not found" not in resolve_log
    jars = local_properties(profile)["spark.jars"].split(",")  # now from the record: no second resolution
    assert any("delta-spark" in jar for jar in jars) and all(str(ivy) in jar for jar in jars)
