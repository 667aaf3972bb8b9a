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

    @property
    def corpus(self) -> str:
        return str(self.out / "corpus")

    @property
    def head_scores(self) -> str:
        return str(self.out / "head_scores")

    @property
    def scored(self) -> str:
        return str(self.out / "scored")

    @property
    def selected(self) -> str:
        return str(self.out / "selected")

    @property
    def heads_json(self) -> str:
        return str(self.out / "heads.json")

    @property
    def plots(self) -> Path:
        return self.out / "plots"


def demo_paths() -> DemoPaths:
    out = Path(os.environ.get("ATTENTION_INFLUENCE_OUTPUT", REPO / "demo-output"))
    return DemoPaths(out, os.environ.get("ATTENTION_INFLUENCE_MODEL", str(REPO / "fixtures" / "tiny-llama")))


def session(existing=None):
    """Databricks' `spark` when the notebook has one, else a local session with Delta."""
    return existing if existing is not None else get_spark("attention-influence-notebook")


def run_job(module, *flags) -> None:
    """A job's entry point on the notebook's session; a user error stops the notebook."""
    code = run(module.main, [str(f) for f in flags])
    if code:
        raise RuntimeError(f"{module.__name__} failed with exit code {code}")
