"""Small builders shared by the Spark and end-to-end tests, and the copy task the model tests measure."""

from __future__ import annotations

import json
import random
from pathlib import Path

from spark_jobs.cli import run

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


# ---------------------------------------------------------------- the copy task

SEG_LEN = 64
SEEDS = (0, 1, 2, 3, 4, 5)


def repeated_sequences(tokenizer, vocab_size: int):
    """Per seed: BOS, SEG_LEN random non-special token ids, the same ids again (a torch tensor)."""
    import torch

    specials = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(vocab_size) if i not in specials]
    rows = []
    for seed in SEEDS:
        rng = random.Random(seed)
        seg = [rng.choice(ordinary) for _ in range(SEG_LEN)]
        rows.append([tokenizer.bos_token_id] + seg + seg)
    return torch.tensor(rows)


def copy_gain_removed(model, tokenizer, heads, mode: str, draws: int = 5) -> tuple[float, float]:
    """Share of the model's copy gain (first-copy loss - second-copy loss on repeated random tokens) that
    masking `heads` removes, and the mean share for as many random other heads (`draws` seeded draws)."""
    import torch
    import torch.nn.functional as F

    from attention_influence.masking import mask_heads

    ids = repeated_sequences(tokenizer, model.config.vocab_size)

    def losses() -> tuple[float, float]:
        with torch.inference_mode():
            logits = model(input_ids=ids).logits.float()
        first = F.cross_entropy(logits[:, :SEG_LEN].flatten(0, 1), ids[:, 1:SEG_LEN + 1].flatten())
        second = F.cross_entropy(logits[:, SEG_LEN:-1].flatten(0, 1), ids[:, SEG_LEN + 1:].flatten())
        return float(first), float(second)

    first, second = losses()
    gain = first - second

    def removed(pick) -> float:
        with mask_heads(model, pick, mode=mode):
            return (losses()[1] - second) / gain

    n_layers, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in set(heads)]
    rng = random.Random(0)
    return removed(heads), sum(removed(rng.sample(others, len(heads))) for _ in range(draws)) / draws
