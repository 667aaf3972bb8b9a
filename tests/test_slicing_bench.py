"""benchmarks/slicing.py (make bench's sliced_vs_oneshot) runs end to end on the fixture model, in its own
process; the figures themselves are measured by `make bench` on an idle machine (docs/benchmarks.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import FIXTURE_MODEL, REPO

pytestmark = pytest.mark.slow


def test_slicing_bench_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "slicing.py"), "--model", FIXTURE_MODEL,
                             "--documents", "12", "--slice-documents", "4", "--max-seq-len", "64",
                             "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    values = dict(re.findall(r"^(\w+)=(\S+)$", result.stdout, re.M))
    assert float(values["sliced_vs_oneshot"]) > 0 and int(values["slices"]) >= 2
    assert values["slice_documents"] == "4"
    assert int(values["sliced_files"]) >= 1 and int(values["oneshot_files"]) >= 1
