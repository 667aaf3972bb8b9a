"""Every line a job prints on the driver goes through here, so the console holds what a user acts on.

Two streams, as shell users expect: the job's results (what it wrote, its summary, a report) on stdout,
where a pipe or `tee` takes them; what happens meanwhile (plan, progress, slices, warnings, errors) on
stderr. Per-task and per-worker detail only with `--verbose` (`detail`); on a cluster the executors print
theirs to their own logs (`udfs.influence.ScoringSettings.verbose`).
"""

from __future__ import annotations

import sys

_verbose = False


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = bool(on)


def verbose() -> bool:
    """Whether the job runs with --verbose."""
    return _verbose


def result(line: str) -> None:
    """What the job produced: its summary and reports (stdout)."""
    print(line, flush=True)


def say(line: str, stream=None) -> None:
    """What the job is doing: plan, progress, slices, commits (stderr)."""
    print(line, file=stream or sys.stderr, flush=True)


def detail(line: str) -> None:
    """Only with --verbose: lines a user reads when something looks wrong."""
    if _verbose:
        say(line)


def warn(line: str) -> None:
    say(f"warning: {line}")


def error(line: str) -> None:
    say(f"error: {line}")
