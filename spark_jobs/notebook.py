"""What the notebooks share: the session (Databricks' own or a local one), their parameters as
widgets, display(), and the demo's table paths. A notebook runs a job as `job.run(spark, job.options(...))`
on its own session, with the same options the job's flags build.

On Databricks a notebook has `spark`, `dbutils` and `display`; run as a plain script it has none
of them. The notebooks pass what they have (`globals().get(...)`) to the helpers here, so the same
file runs unchanged in both places: parameters are text widgets with the defaults of conf/*.yaml
(`dbutils.widgets.text` / `get`), plain defaults locally; tables go to `display()`, else `.show()`.
Locally ATTENTION_INFLUENCE_OUTPUT and ATTENTION_INFLUENCE_MODEL change the default output folder
(demo-output/) and model (conf/detect_heads.yaml's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spark_jobs.cli import CONF, REPO, read_yaml
from spark_jobs.session import get_spark


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


def demo_paths(out: str | Path | None = None, model: str | None = None) -> DemoPaths:
    out = Path(out or default_output())
    tables = {name: str(out / name) for name in ("corpus", "head_scores", "scored", "selected")}
    return DemoPaths(out=out, model=str(model or default_model()), heads_json=str(out / "heads.json"),
                     plots=out / "plots", **tables)


def default_output() -> str:
    return os.environ.get("ATTENTION_INFLUENCE_OUTPUT", str(REPO / "demo-output"))


def default_model() -> str:
    return os.environ.get("ATTENTION_INFLUENCE_MODEL") or in_repo(job_defaults("detect_heads")["model"])


def in_repo(path: str) -> str:
    """A conf/ path relative to the repository, absolute (a notebook's cwd is its own folder)."""
    return path if os.path.isabs(path) or not (REPO / path).exists() else str(REPO / path)


def job_defaults(job: str) -> dict:
    """The defaults of conf/<job>.yaml, the same the job's flags start from."""
    return read_yaml(CONF / f"{job}.yaml")


def widgets(dbutils, defaults: dict) -> dict[str, str]:
    """The notebook's parameters by name, as strings (widgets hold text).

    With Databricks' `dbutils`: a text widget per parameter, declared with its default, and the
    value the user set there. Without it (a plain script): the defaults.
    """
    if dbutils is None:
        return {name: str(value) for name, value in defaults.items()}
    for name, value in defaults.items():
        dbutils.widgets.text(name, str(value), name.replace("_", " "))
    return {name: dbutils.widgets.get(name) for name in defaults}


def show(df, display=None, rows: int = 20) -> None:
    """Databricks' `display(df)` when the notebook has it, else `df.show()` in full width."""
    if display is not None:
        display(df)
    else:
        df.show(rows, truncate=False)


def session(existing=None):
    """Databricks' `spark` when the notebook has one, else a local session with Delta."""
    return existing if existing is not None else get_spark("attention-influence-notebook")

