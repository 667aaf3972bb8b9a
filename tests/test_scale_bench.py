"""benchmarks/scale.py (make bench-scale) end to end at a size the suite affords, in its own process:
every slicing run leaves each id once, classic and Spark Connect, and the selection's stages are
reported. The figures themselves come from `make bench-scale` on an idle machine (docs/benchmarks.md);
the skew bound is asserted at 200,000 rows in tests/test_ranking_at_scale.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_scale_bench_small(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale.py"), "--rows", "20000",
                             "--committed", "0,3000", "--documents", "24", "--slice-documents", "4",
                             "--tasks", "4", "--no-reference", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    values = dict(re.findall(r"^(\w+)=(\S+)$", result.stdout, re.M))
    for key in ("slices_0", "slices_3000", "connect_slices_0", "connect_slices_3000"):
        assert values[f"{key}_exactly_once"] == "True", key
    assert int(values["select_by_domain_20000_tasks"]) == 4
    assert "extrapolated to the paper's corpus" in result.stdout
