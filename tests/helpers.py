"""Small builders shared by the Spark and end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

from spark_jobs.common import run

DOCS_DDL = "id STRING, domain STRING, text STRING"

SAMPLE_TEXTS = [
    ("code-1", "code", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n"),
    ("code-2", "code", "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n" * 6),
    ("code-3", "code", "import os\nimport sys\n\npath = os.path.join(sys.prefix, 'lib')\n"),
    ("code-4", "code", "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n"),
    ("prose-1", "prose", "Return the number of items in a container. The argument may be a sequence or a collection."),
    ("prose-2", "prose", "Open a file and return a stream. Raise OSError upon failure. " * 12),
    ("prose-3", "prose", "This module provides access to some objects used or maintained by the interpreter."),
    ("legal-1", "legal", "Permission is hereby granted, free of charge, to any person obtaining a copy of this software."),
    ("legal-2", "legal", "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED. " * 5),
    ("legal-3", "legal", "Redistribution and use in source and binary forms, with or without modification, are permitted."),
]


def write_docs(spark, rows, path, ddl: str = DOCS_DDL):
    spark.createDataFrame(rows, ddl).write.format("delta").mode("overwrite").save(str(path))
    return str(path)


def write_heads(path: Path, heads) -> str:
    path.write_text(json.dumps({"model": "test", "model_revision": None, "top_fraction": 0.05,
                                "heads": [list(h) for h in heads], "scores": {}}))
    return str(path)


def run_job(module, argv, capsys=None):
    """Run a job's real entry point in-process (the suite's SparkSession is the active one)."""
    code = run(module.main, [str(a) for a in argv])
    captured = capsys.readouterr() if capsys is not None else None
    return code, captured
