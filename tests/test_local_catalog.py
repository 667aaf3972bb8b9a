"""Two local jobs at once (SPEC §1): the local catalog (a Hive metastore on embedded Derby) admits one process.

While another process holds it (an open notebook's session that ran SHOW DATABASES), jobs that name only
Delta paths run side by side with quiet consoles; a job that names a table waits with one line and ends
with one line when the wait runs out, or goes on once the catalog is free. Real processes, as users run them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from spark_jobs.local_profile import read_properties
from tests.conftest import REPO, private_catalog

pytestmark = pytest.mark.slow

HOLDER = """
import time
from spark_jobs.session import get_spark
spark = get_spark("attention-influence-test-catalog-holder")  # a notebook's session: the persistent catalog
spark.sql("SHOW DATABASES").collect()
print("HELD", flush=True)
time.sleep(600)
"""


@pytest.fixture
def on_disk_catalog(tmp_path, spark_profile):
    """The suite's profile with the catalog on disk (as the local profile's is): the environment of a job."""
    props = read_properties(spark_profile)
    props.update(private_catalog(tmp_path / "catalog"))
    conf = tmp_path / "on-disk-catalog.conf"
    conf.write_text("".join(f"{k} {v}\n" for k, v in props.items()))
    return dict(os.environ, ATTENTION_INFLUENCE_SPARK_CONF=str(conf), PYTHONPATH=str(REPO))


@pytest.fixture
def holder(on_disk_catalog):
    """A process holding the local catalog until the test ends (stopped by its pid)."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER], env=on_disk_catalog, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 240
        line = ""
        while time.monotonic() < deadline and process.poll() is None:
            line = process.stdout.readline()
            if line.strip() == "HELD":
                break
        assert line.strip() == "HELD", "the holder did not take the catalog"
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def start_job(env, *args, **extra_env):
    return subprocess.Popen([sys.executable, str(REPO / "spark_jobs" / "build_corpus.py"), "--per-domain", "3",
                             *map(str, args)], env=dict(env, **extra_env), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def test_path_only_jobs_run_beside_a_process_holding_the_catalog(tmp_path, on_disk_catalog, holder):
    first = start_job(on_disk_catalog, "--output", tmp_path / "first")
    second = start_job(on_disk_catalog, "--output", tmp_path / "second")
    for process in (first, second):
        code, out, err = finish(process)
        assert code == 0, err
        assert out.startswith("wrote 9 documents")
        assert err == "", err  # no Derby trace, no JVM start-up line, no Spark warning


def test_a_named_table_waits_for_the_catalog_with_one_line(tmp_path, on_disk_catalog, holder):
    code, out, err = finish(start_job(on_disk_catalog, "--output", "default.catalog_test_corpus",
                                      ATTENTION_INFLUENCE_CATALOG_WAIT="3"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert lines[0].startswith("the local catalog (") and "in use by another process; waiting up to 3s" in lines[0]
    assert lines[1].startswith("error: the local catalog (") and "still in use by another process after 3s" in lines[1]
    assert "docs/sql-and-notebooks.md" in lines[1]

    waiting = start_job(on_disk_catalog, "--output", "default.catalog_test_corpus",
                        ATTENTION_INFLUENCE_CATALOG_WAIT="300")
    time.sleep(5)
    os.kill(holder.pid, signal.SIGTERM)  # the notebook is closed: the job goes on
    holder.wait(timeout=60)
    code, out, err = finish(waiting)
    assert code == 0, err
    assert out.startswith("wrote 9 documents") and "to default.catalog_test_corpus" in out
    assert err.strip().splitlines() == [line for line in err.strip().splitlines() if "waiting up to 300s" in line]
