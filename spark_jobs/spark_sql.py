"""`spark-sql` on the local profile, from any directory, without Ivy's start-up report.

    python spark_jobs/spark_sql.py -e "SELECT COUNT(*) FROM demo.scored"    # make sql Q="..."
    python spark_jobs/spark_sql.py                                           # interactive shell

The launcher that ships with pyspark (`spark-sql`) gets the properties `get_spark` uses: the
local profile's paths made absolute (the catalog under demo-output/, the Ivy settings, the log
configuration) and Delta's jars already resolved. Arguments are passed through unchanged.
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import os
import subprocess
import sys
import tempfile

from spark_jobs.local_profile import local_properties


def launcher() -> str:
    """The spark-sql script of the installed pyspark."""
    import pyspark

    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-sql")


def main(argv: list[str] | None = None) -> int:
    props = local_properties()
    props.pop("spark.app.name", None)
    with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="attention-influence-") as conf:
        conf.write("".join(f"{key} {value}\n" for key, value in props.items()))
        conf.flush()
        env = dict(os.environ, PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable))
        return subprocess.call([launcher(), "--properties-file", conf.name, *(sys.argv[1:] if argv is None else argv)],
                               env=env)


if __name__ == "__main__":
    sys.exit(main())
