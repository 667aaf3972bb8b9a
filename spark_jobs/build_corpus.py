"""Write the demo corpus (real local text in three domains) as a Delta table `id, domain, text`."""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from collections import Counter
from dataclasses import dataclass

from spark_jobs import common
from spark_jobs.common import JobError, get_spark, new_parser, options_from, parse_flags, positive_int, replace_table


def build_parser():
    p = new_parser("Build the sample corpus from Python's standard library and licence texts.")
    p.add_argument("--output", help="Delta path or catalog table to write")
    p.add_argument("--per-domain", type=positive_int, help="documents per domain at most")
    p.add_argument("--max-chars", type=positive_int, help="characters per document at most")
    p.add_argument("--min-chars", type=positive_int, help="characters per document at least (drops short pieces)")
    return p


@dataclass(frozen=True, kw_only=True)
class CorpusOptions:
    """The flags of build_parser(), one field each (defaults: conf/build_corpus.yaml)."""

    output: str
    per_domain: int
    max_chars: int
    min_chars: int


def parse_options(argv: list[str] | None = None, settings: dict | None = None) -> CorpusOptions:
    """Options from flags over `--config` over `settings` over conf/build_corpus.yaml (the edge of the job)."""
    options = options_from(CorpusOptions, parse_flags("build_corpus", build_parser(), argv, settings), ("output",))
    if options.min_chars > options.max_chars:
        raise JobError(f"--min-chars ({options.min_chars}) is above --max-chars ({options.max_chars})")
    return options


def options(**settings) -> CorpusOptions:
    """Options for a notebook or a test: conf/build_corpus.yaml's defaults with `settings` over them."""
    return parse_options([], settings)


def run(spark, options: CorpusOptions) -> None:
    from demo.corpus import sample_corpus

    docs = sample_corpus(per_domain=options.per_domain, max_chars=options.max_chars, min_chars=options.min_chars)
    frame = spark.createDataFrame([(d.id, d.domain, d.text) for d in docs], "id STRING, domain STRING, text STRING")
    replace_table(frame.repartition(4), options.output)
    counts = Counter(d.domain for d in docs)
    print(f"wrote {len(docs)} documents ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}) "
          f"to {options.output}")


def main(argv=None):
    options = parse_options(argv)  # before Spark starts: a user error is one line
    run(get_spark("attention-influence-corpus"), options)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
