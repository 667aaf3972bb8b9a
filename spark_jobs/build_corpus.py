"""Write the demo corpus (real local text in three domains) as a Delta table `id, domain, text`."""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from collections import Counter

from spark_jobs.common import JobError, get_spark, new_parser, parse_flags, positive_int, replace_table, run


def build_parser():
    p = new_parser("Build the sample corpus from Python's standard library and licence texts.")
    p.add_argument("--output", help="Delta path or catalog table to write")
    p.add_argument("--per-domain", type=positive_int, help="documents per domain at most")
    p.add_argument("--max-chars", type=positive_int, help="characters per document at most")
    p.add_argument("--min-chars", type=positive_int, help="characters per document at least (drops short pieces)")
    return p


def main(argv=None):
    args = parse_flags("build_corpus", build_parser(), argv)
    from demo.corpus import sample_corpus

    if args.min_chars > args.max_chars:
        raise JobError(f"--min-chars ({args.min_chars}) is above --max-chars ({args.max_chars})")
    docs = sample_corpus(per_domain=args.per_domain, max_chars=args.max_chars, min_chars=args.min_chars)
    spark = get_spark("attention-influence-corpus")
    frame = spark.createDataFrame([(d.id, d.domain, d.text) for d in docs], "id STRING, domain STRING, text STRING")
    replace_table(frame.repartition(4), args.output)
    counts = Counter(d.domain for d in docs)
    print(f"wrote {len(docs)} documents ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}) "
          f"to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
