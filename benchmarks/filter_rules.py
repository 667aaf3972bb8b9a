"""What the filter's default rules remove, per domain and rule, and how fast they run in pure Python.

    python benchmarks/filter_rules.py [--system] [--processes 2]

Document sets: `demo` (the corpus `make demo` builds: 110 per domain, 400-1,000 characters),
`heldout` (`demo.heldout`: package READMEs, third-party Python sources) and, with `--system`, files
of this machine that no one here wrote (Perl modules and Go sources as `code`, /usr/share/common-licenses
as `legal`, man pages rendered by `man` as `man`; what is there depends on the machine). Each row is
judged by conf/filter.yaml's rule set for its domain: the per-text rules and exact duplicates (first
id kept), in the filter job's order; near-duplicates need Spark and are not counted here (the filter
job prints them). Throughput: the per-text rules over each set in `--processes` worker processes,
documents and characters per second (wall clock of the pool's map, after a warm-up pass).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from attention_influence.filter_rules import EXACT_DUPLICATE, FilterConfig  # noqa: E402
from attention_influence.gopher import content_hash  # noqa: E402
from demo.corpus import Document, sample_corpus  # noqa: E402
from demo.heldout import heldout_documents  # noqa: E402


def default_config() -> FilterConfig:
    from spark_jobs import filter as filter_job

    return filter_job.rule_config(filter_job.parse_options([]))


def system_documents(per_kind: int = 40, max_chars: int = 20_000) -> list[Document]:
    """Up to `per_kind` files of each kind found on this machine, spread over their sorted paths."""
    kinds = (("code", "/usr/share/perl5", ".pm"), ("code", "/usr/local/go/src", ".go"),
             ("legal", "/usr/share/common-licenses", ""), ("man", "/usr/share/man/man1", ".gz"))
    documents = []
    for domain, root, suffix in kinds:
        paths = sorted(p for p in Path(root).rglob(f"*{suffix}") if p.is_file() and not p.name.endswith("_test.go"))
        for path in paths[::max(1, len(paths) // per_kind)][:per_kind]:
            if domain == "man":
                done = subprocess.run(["man", "-l", str(path)], capture_output=True, text=True,
                                      env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
                text = subprocess.run(["col", "-b"], input=done.stdout, capture_output=True, text=True).stdout
            else:
                text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                documents.append(Document(f"{domain}:{path}", domain, text[:max_chars], str(path)))
    return documents


def verdicts(documents: list[Document], config: FilterConfig) -> Counter:
    """(domain, outcome) -> documents: exact duplicates of an earlier id first, then the first rule broken."""
    first_of: dict[tuple[str, bool], str] = {}
    outcomes = Counter()
    for doc in sorted(documents, key=lambda d: d.id):
        rule_set = config.rules_for(doc.domain)
        rule = rule_set.first_rule(doc.text) if rule_set.rules else None
        key = (content_hash(doc.text), rule_set.dedups)
        duplicate = rule != "empty" and rule_set.dedups and key in first_of
        first_of.setdefault(key, doc.id)
        outcomes[(doc.domain, EXACT_DUPLICATE if duplicate else rule or "kept")] += 1
    return outcomes


_CONFIG: FilterConfig | None = None


def _judge(item: tuple[str, str]) -> str | None:
    domain, text = item
    return _CONFIG.rules_for(domain).first_rule(text)


def _start(config: FilterConfig) -> None:
    global _CONFIG
    _CONFIG = config


def throughput(documents: list[Document], config: FilterConfig, processes: int) -> tuple[float, float]:
    """(documents/s, characters/s) of the per-text rules over `documents` in a pool of `processes`."""
    items = [(d.domain, d.text) for d in documents]
    with Pool(processes, initializer=_start, initargs=(config,)) as pool:
        pool.map(_judge, items, chunksize=16)  # warm-up: imports, regex compilation
        start = time.perf_counter()
        pool.map(_judge, items, chunksize=16)
        seconds = time.perf_counter() - start
    return len(items) / seconds, sum(len(t) for _, t in items) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", action="store_true", help="also this machine's Perl, Go, licence and man files")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    config = default_config()
    sets = {"demo": sample_corpus(per_domain=110, max_chars=1000, min_chars=400), "heldout": heldout_documents()}
    if args.system:
        sets["system"] = system_documents()
    for name, documents in sets.items():
        counts = verdicts(documents, config)
        for domain in sorted({d for d, _ in counts}):
            outcomes = {o: n for (d, o), n in counts.items() if d == domain}
            rejected = ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0]))
                                 if o != "kept")
            print(f"{name} {domain}: {sum(outcomes.values())} documents, {outcomes.get('kept', 0)} kept"
                  + (f" (rejected: {rejected})" if rejected else ""))
        docs_per_s, chars_per_s = throughput(documents, config, args.processes)
        mean_chars = sum(len(d.text) for d in documents) / len(documents)
        print(f"{name}: {docs_per_s:,.0f} documents/s, {chars_per_s / 1e6:.2f} M characters/s in {args.processes} "
              f"processes (mean {mean_chars:,.0f} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
