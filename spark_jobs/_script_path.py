"""Imported first by a job run as a script (`python spark_jobs/<job>.py`, `spark-submit spark_jobs/<job>.py`).

Python then puts this folder first on sys.path, where spark_jobs/select.py would shadow the standard
library's `select` (which subprocess imports) and the `spark_jobs` package itself would not be found:
the folder is replaced by the repository root. A job imported as `spark_jobs.<job>` never needs this;
each job imports it only under `if __name__ == "__main__":`.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
