"""How evenly a query spreads its rows over tasks, read from Spark's own task metrics (classic session).

For every stage of the jobs run inside `measured()`: its tasks, the records each task read (input
records + shuffle records) and the largest task's share of the stage's records. A stage that reads
all of a domain in one task shows it as a share near the domain's share of the table, whatever
the machine's speed; `make bench-scale` prints these, tests/test_ranking_at_scale.py asserts on them.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSkew:
    stage_id: int
    name: str
    task_records: tuple[int, ...]  # per successful task: input records + shuffle records read
    shuffle_records: int           # of the stage's records, those read from a shuffle

    @property
    def tasks(self) -> int:
        return len(self.task_records)

    @property
    def records(self) -> int:
        return sum(self.task_records)

    @property
    def largest_share(self) -> float:
        return max(self.task_records) / self.records if self.records else 0.0

    def even_multiple(self) -> float:
        """The largest task's records over an even share (1.0: perfectly even; `tasks`: one task holds all)."""
        return self.largest_share * self.tasks

    def line(self) -> str:
        return (f"stage {self.stage_id:>4} {self.tasks:>4} tasks {self.records:>11,} records "
                f"largest task {self.largest_share:6.1%} ({self.even_multiple():4.2f}x an even share)  "
                f"{self.name[:60]}")


@dataclass
class Measurement:
    stages: list[StageSkew] = field(default_factory=list)

    def shuffled(self, at_least: int) -> list[StageSkew]:
        """Stages that read at least `at_least` rows from a shuffle: where the query's own partitioning
        decides the spread (a scan's spread is the table's file layout)."""
        return [s for s in self.stages if s.shuffle_records >= at_least]


@contextmanager
def measured(spark):
    """Collect per-stage task records of every Spark job started in the block (by its job group)."""
    context = spark.sparkContext
    group = f"stage-skew-{uuid.uuid4().hex[:8]}"
    previous = context.getLocalProperty("spark.jobGroup.id")
    context.setJobGroup(group, "measured for skew", interruptOnCancel=False)
    measurement = Measurement()
    try:
        yield measurement
    finally:
        if previous:
            context.setLocalProperty("spark.jobGroup.id", previous)
        else:
            context.setLocalProperty("spark.jobGroup.id", None)
    measurement.stages = stage_skews(spark, group)


def stage_skews(spark, group: str) -> list[StageSkew]:
    context = spark.sparkContext
    jsc = context._jsc.sc()
    jsc.listenerBus().waitUntilEmpty(60_000)  # the status store is filled from the listener bus
    tracker = context.statusTracker()
    store = jsc.statusStore()
    stage_ids = sorted({s for job in tracker.getJobIdsForGroup(group)
                        for s in (tracker.getJobInfo(job).stageIds if tracker.getJobInfo(job) else [])})
    result = []
    for stage_id in stage_ids:
        info = tracker.getStageInfo(stage_id)
        tasks = store.taskList(stage_id, info.currentAttemptId if info else 0, 1_000_000).iterator()
        records, shuffled = [], 0
        while tasks.hasNext():
            task = tasks.next()
            if task.status() != "SUCCESS" or not task.taskMetrics().isDefined():
                continue
            metrics = task.taskMetrics().get()
            read = int(metrics.shuffleReadMetrics().recordsRead())
            records.append(int(metrics.inputMetrics().recordsRead()) + read)
            shuffled += read
        if records:  # a stage skipped because its shuffle output was reused has no tasks
            result.append(StageSkew(stage_id, info.name if info else "", tuple(records), shuffled))
    return result
