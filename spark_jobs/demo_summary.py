"""The summary `make demo` ends with: heads, retrieval-task accuracies, documents scored, tokens/s,
the top and bottom documents of each domain, and the tables and files the demo wrote.

    python spark_jobs/demo_summary.py --out demo-output
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
import json
import re
from dataclasses import dataclass
from pathlib import Path

from spark_jobs.analysis import extremes as domain_extremes
from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, flag, positive_int, run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import read_table

TABLES = ("corpus", "kept", "rejected", "head_scores", "scored", "selected", "probe_report")


@dataclass(frozen=True, kw_only=True)
class SummaryOptions:
    """One field per flag (defaults: conf/demo_summary.yaml)."""

    out: str = flag("the demo's output folder", required=True)
    score_log: str | None = flag("score.py's printed output, for its tokens/s (default <out>/score_summary.txt)")
    per_side: int = flag("top and bottom documents shown per domain", type=positive_int)


JOB = Job("demo_summary", SummaryOptions, "Print the demo's summary from the tables and files it wrote.")
build_parser = JOB.parser


def heads_lines(heads_file: Path) -> list[str]:
    """Selected heads with their scores, and whatever task accuracies detect_heads.py recorded."""
    if not heads_file.exists():
        return [f"heads: {heads_file} not found"]
    document = json.loads(heads_file.read_text())
    heads = [tuple(h) for h in document.get("heads", [])]
    scores = document.get("scores", {})
    shown = ", ".join(f"{l}.{h} ({scores[f'{l}.{h}']:.2f})" if f"{l}.{h}" in scores else f"{l}.{h}"
                      for l, h in heads)
    lines = [f"model: {document.get('model')} ({document.get('model_revision')})",
             f"heads: {len(heads)} of {len(scores) or '?'} selected (top {document.get('top_fraction')}; "
             f"layer.head (retrieval score)): {shown}"]
    accuracies = _accuracies(document)
    if accuracies:
        lines.append("retrieval-task accuracy: " + ", ".join(f"{name} {value:.3f}" if isinstance(value, float)
                                                          else f"{name} {value}" for name, value in accuracies))
    else:
        lines.append("retrieval-task accuracy: not recorded in the heads JSON")
    return lines


def _accuracies(document: dict) -> list[tuple[str, object]]:
    """(name, value) of the accuracy entries, flat (`accuracy_full`, ...) or nested under one key."""
    found = []
    for key, value in document.items():
        if "accura" not in key.lower():
            continue
        if isinstance(value, dict):
            found.extend((f"{key}.{k}", v) for k, v in value.items() if isinstance(v, (int, float)))
        elif isinstance(value, (int, float)):
            found.append((key, value))
    order = {"full": 0, "masked": 1, "random": 2}
    return sorted(found, key=lambda kv: max((o for word, o in order.items() if word in kv[0]), default=3))


def filter_lines(spark, out: Path) -> list[str]:
    """What filter.py removed, per rule, then per domain and rule (when the demo ran it: <out>/kept and
    <out>/rejected exist)."""
    from spark_jobs.filter import domain_line, outcome_counts, rejected_text

    if not ((out / "kept").exists() and (out / "rejected").exists()):
        return []
    kept_table, rejected_table = read_table(spark, str(out / "kept")), read_table(spark, str(out / "rejected"))
    by_domain = "domain" in kept_table.columns and "domain" in rejected_table.columns
    keys = ["domain"] if by_domain else []
    outcomes: dict[str | None, dict[str, int]] = {}
    for r in kept_table.groupBy(*keys).count().collect():
        outcomes.setdefault(r["domain"] if by_domain else None, {})["kept"] = r["count"]
    for r in rejected_table.groupBy(*keys, "rejected_by").count().collect():
        outcomes.setdefault(r["domain"] if by_domain else None, {})[r["rejected_by"]] = r["count"]
    totals = outcome_counts(outcomes)
    kept = totals.get("kept", 0)
    removed = sum(totals.values()) - kept
    rules = rejected_text(totals)
    lines = [f"filter: {kept + removed} documents, {kept} kept, {removed} rejected" + (f" ({rules})" if rules else "")]
    if by_domain:
        lines += [domain_line(d, outcomes[d]) for d in sorted(outcomes, key=lambda d: (d is None, d or ""))]
    return lines


def probe_lines(spark, out: Path) -> list[str]:
    """The probe report's rows (when `make probe` wrote <out>/probe_report)."""
    if not (out / "probe_report").exists():
        return []
    rows = read_table(spark, str(out / "probe_report")).orderBy("probe_set", "selector").collect()
    lines = ["probe report (share of probes in each selector's top, base rate, 95% CI):"]
    for r in rows:
        lines.append(f"  {r['probe_set']} {r['selector']:<20} {r['share_in_top']:.3f} (base {r['base_rate']:.3f}, "
                     f"CI {r['ci_low']:.3f}-{r['ci_high']:.3f}; {r['probes']} probes, {r['controls']} controls)")
    return lines


def throughput(score_log: Path) -> str | None:
    """score.py's own `scored N documents (T tokens) in S s: R tokens/s` line."""
    if not score_log.exists():
        return None
    for line in score_log.read_text().splitlines():
        if re.match(r"scored \d+ documents", line):
            return line.strip()
    return None


def _one_line(text: str, width: int = 90) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def main(argv=None):
    args = JOB.parse(argv)
    from pyspark.sql import functions as F

    out = Path(args.out)
    spark = get_spark("attention-influence-demo-summary", tuple(str(out / table) for table in TABLES))
    run_log.result("== demo summary ==")
    for line in heads_lines(out / "heads.json"):
        run_log.result(line)

    for line in filter_lines(spark, out):
        run_log.result(line)

    scored_ref = str(out / "scored")
    scored = read_table(spark, scored_ref)
    if not {"id", "domain"}.issubset(scored.columns):
        raise JobError(f"{scored_ref} has no id/domain columns: not a demo table")
    by_status = {r["status"]: r["count"] for r in scored.groupBy("status").count().collect()}
    run_log.result(f"documents scored: {sum(by_status.values())} ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))})")
    run_log.result(throughput(Path(args.score_log) if args.score_log else out / "score_summary.txt")
                   or "tokens/s: score.py's output not found")
    domains = (scored.where(F.col("status") == "ok").groupBy("domain")
               .agg(F.count("*").alias("documents"), F.sum("n_tokens").alias("tokens"),
                    F.avg("loss_full").alias("loss_full"), F.avg("loss_masked").alias("loss_masked"),
                    F.avg("attention_influence").alias("influence"))
               .orderBy("domain").collect())
    for r in domains:
        run_log.result(f"  {r['domain']:<8} {r['documents']:>5} documents {r['tokens']:>8} tokens  mean loss_full "
                       f"{r['loss_full']:.3f}, loss_masked {r['loss_masked']:.3f}, attention_influence {r['influence']:.4f}")

    extremes = domain_extremes(spark, scored, args.per_side).collect()
    run_log.result(f"top and bottom {args.per_side} documents per domain (attention_influence, tokens, start of text):")
    for r in extremes:
        run_log.result(f"  {r['domain']:<8} {r['side']:<6} {r['attention_influence']:+.4f} {r['n_tokens']:>5}  "
                       f"{_one_line(r['text_start'])!r}")

    selected_ref = str(out / "selected")
    selected = read_table(spark, selected_ref).count() if (out / "selected").exists() else None
    if selected is not None:
        run_log.result(f"selected: {selected} documents -> {selected_ref}")
    for line in probe_lines(spark, out):
        run_log.result(line)
    run_log.result("tables (Delta): " + ", ".join(str(out / t) for t in TABLES if (out / t).exists()))
    files = [out / "heads.json", out / "heads.png"] + sorted((out / "plots").glob("*.png"))
    run_log.result("files: " + ", ".join(str(f) for f in files if f.exists()))
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
