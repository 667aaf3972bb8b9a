"""Write the demo corpus (real local text in three domains) as a Delta table `id, domain, text`."""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
from collections import Counter
from dataclasses import dataclass

from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, flag, positive_int, run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import write_table


@dataclass(frozen=True, kw_only=True)
class CorpusOptions:
    """One field per flag (defaults: conf/build_corpus.yaml)."""

    output: str = flag("Delta path or catalog table to write", required=True)
    per_domain: int = flag("documents per domain at most", type=positive_int)
    max_chars: int = flag("characters per document at most", type=positive_int)
    min_chars: int = flag("characters per document at least (drops short pieces)", type=positive_int)


def check_lengths(options: CorpusOptions) -> CorpusOptions:
    if options.min_chars > options.max_chars:
        raise JobError(f"--min-chars ({options.min_chars}) is above --max-chars ({options.max_chars})")
    return options


JOB = Job("build_corpus", CorpusOptions, "Build the sample corpus from Python's standard library and licence texts.",
          check=check_lengths)
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


def run(spark, options: CorpusOptions) -> None:
    from demo.corpus import sample_corpus

    docs = sample_corpus(per_domain=options.per_domain, max_chars=options.max_chars, min_chars=options.min_chars)
    frame = spark.createDataFrame([(d.id, d.domain, d.text) for d in docs], "id STRING, domain STRING, text STRING")
    write_table(frame.repartition(4), options.output)
    counts = Counter(d.domain for d in docs)
    run_log.result(f"wrote {len(docs)} documents ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}) "
                   f"to {options.output}")


def main(argv=None):
    options = parse_options(argv)  # before Spark starts: a user error is one line
    run(get_spark("attention-influence-corpus", (options.output,)), options)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
