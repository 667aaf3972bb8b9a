"""What the notebooks share: the session (Databricks' own or a local one) and the demo's table paths.

Locations come from environment variables so the test suite can point the
notebooks at a temporary folder: ATTENTION_INFLUENCE_OUTPUT (default
demo-output/), ATTENTION_INFLUENCE_MODEL (default the fixture model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spark_jobs.common import REPO, get_spark, run


@dataclass(frozen=True)
class DemoPaths:
    out: Path
    model: str
    corpus: str
    head_scores: str
    scored: str
    selected: str
    heads_json: str
    plots: Path


def demo_paths() -> DemoPaths:
    out = Path(os.environ.get("ATTENTION_INFLUENCE_OUTPUT", REPO / "demo-output"))
    tables = {name: str(out / name) for name in ("corpus", "head_scores", "scored", "selected")}
    return DemoPaths(out=out, model=os.environ.get("ATTENTION_INFLUENCE_MODEL", str(REPO / "fixtures" / "tiny-llama")),
                     heads_json=str(out / "heads.json"), plots=out / "plots", **tables)


def session(existing=None):
    """Databricks' `spark` when the notebook has one, else a local session with Delta."""
    return existing if existing is not None else get_spark("attention-influence-notebook")


def run_job(module, *flags) -> None:
    """A job's entry point on the notebook's session; a user error stops the notebook."""
    code = run(module.main, [str(f) for f in flags])
    if code:
        raise RuntimeError(f"{module.__name__} failed with exit code {code}")
