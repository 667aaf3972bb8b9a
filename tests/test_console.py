"""One console (SPEC §1): a job prints what a user acts on, through spark_jobs/run_log.py; per-task and
per-worker lines only with --verbose. The real entry point, in its own process, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.helpers import SAMPLE_TEXTS, write_docs, write_heads

pytestmark = pytest.mark.slow

# What score.py's console holds on a local run (README "Long runs", docs/long-runs.md): its plan, the run's
# line, progress and slice lines, compaction; its results on stdout.
STDERR_LINES = ("plan: ", "scoring ", "slice ", "compacted ", "resolving ")
STDOUT_LINES = ("scored ", "scorer ")
NOISE = ("[attention-influence] task", "loaded ", "Loading weights", "WARN", "WARNING", "Exception", "Traceback")


def score_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "spark_jobs" / "score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


@pytest.fixture
def job(spark, tmp_path, fixture_model):
    docs = write_docs(spark, [(f"{i}-{n}", d, t) for n in range(3) for i, d, t in SAMPLE_TEXTS], tmp_path / "docs")
    heads = write_heads(tmp_path / "heads.json", [(1, 0), (1, 5)])
    return ["--input", docs, "--model", fixture_model, "--heads", heads, "--max-seq-len", 32, "--slice-documents", 10]


def test_a_run_prints_only_what_a_user_acts_on(tmp_path, job):
    result = score_cli(*job, "--output", tmp_path / "quiet")
    assert result.returncode == 0, result.stderr
    err, out = result.stderr.strip().splitlines(), result.stdout.strip().splitlines()
    assert [line for line in err if not line.startswith(STDERR_LINES)] == [], result.stderr
    assert [line for line in out if not line.startswith(STDOUT_LINES)] == [], result.stdout
    assert any(re.match(r"slice 1: \d+ documents, \d+ tokens in ", line) for line in err), result.stderr
    assert out[-1].startswith("scorer ") and out[-2].startswith("scored 30 documents")
    assert not [line for line in err + out if any(noise in line for noise in NOISE)]


def test_verbose_adds_the_per_task_lines(tmp_path, job):
    result = score_cli(*job, "--output", tmp_path / "verbose", "--verbose")
    assert result.returncode == 0, result.stderr
    tasks = [line for line in result.stderr.splitlines() if line.startswith("[attention-influence] task stage=")]
    assert len(tasks) >= 3, result.stderr  # one per scoring task: three slices of several tasks
    assert any(line.startswith("[attention-influence] loaded ") for line in result.stderr.splitlines())
