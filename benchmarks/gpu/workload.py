"""What every step of the GPU benchmark shares: the run's settings, the shape's workload, timing helpers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RunSettings:
    """The flags once resolved (budget, masking, --smoke's token cap), with the device and its dtype."""

    out: Path
    device: str
    dtype: str
    smoke: bool
    shapes: tuple[str, ...]
    real_model: Path
    kv_heads: int
    seq: int
    tokens: int
    doc_tokens: int
    batch_tokens: int
    masking: str
    spark: str
    spark_master: str | None
    compile: str
    budget_s: float
    started: float  # time.monotonic() when the run began: the budget and the log count from it

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def seconds_left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def enough(self, seconds: float) -> bool:
        """Time for a step of about `seconds` on a GPU (a tenth of it in --smoke) before --budget-s runs out."""
        return self.seconds_left() > (seconds / 10 if self.smoke else seconds)

    def log(self, *parts) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s]", *parts, flush=True)


@dataclass(frozen=True, eq=False)
class Workload:
    """One shape's model and documents, and the scorer settings every step measures them with."""

    run: RunSettings
    name: str
    model: Any
    tokenizer: Any
    heads: list[tuple[int, int]]
    max_seq_len: int
    model_dir: Path | None  # its saved checkpoint; None: random weights, saved only for the Spark step
    batch_tokens: int = 0  # 0 until the batch sweep (or --batch-tokens) sets it
    texts: list[str] = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.run.device

    @property
    def shape(self):
        from benchmarks import flops

        return flops.Shape.of(self.model.config)

    @property
    def first_masked_layer(self) -> int:
        return min(layer for layer, _ in self.heads)

    def scorer(self, **settings):
        """The core Scorer of this workload: the fused pass at its batch_tokens unless `settings` say otherwise."""
        from attention_influence.losses import Scorer

        settings = {"batch_tokens": self.batch_tokens, "fused": True, "masking": self.run.masking, **settings}
        return Scorer(self.model, self.tokenizer, self.heads, self.max_seq_len, **settings)


def sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(scorer, texts, device: str) -> dict:
    """Tokens/s, padding waste and (on a GPU) peak memory of one `scorer.score(texts)`."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    scorer.stats.update(real_tokens=0, padded_tokens=0)
    sync(device)
    started = time.perf_counter()
    docs = scorer.score(texts)
    sync(device)
    elapsed = time.perf_counter() - started
    tokens = sum(d.n_tokens or 0 for d in docs if d.status == "ok")
    out = {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
           "padding_waste": 1 - scorer.stats["real_tokens"] / max(1, scorer.stats["padded_tokens"])}
    if str(device).startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def random_windows(rng, tokenizer, rows: int, length: int) -> list[list[int]]:
    """Full-length windows of random token ids: a batch whose shape, not its text, is measured."""
    return [[rng.randrange(tokenizer.vocab_size) for _ in range(length)] for _ in range(rows)]


def differences_from(reference, got) -> tuple[float, float]:
    """(largest relative difference of loss_full or loss_masked, largest absolute difference of the
    influence) between two scorings of the same documents: how the compile and kernel steps check
    themselves against eager before timing anything."""
    worst = max(max(abs(a.loss_full - b.loss_full) / a.loss_full, abs(a.loss_masked - b.loss_masked) / a.loss_masked)
                for a, b in zip(reference, got))
    influence = max(abs(a.attention_influence - b.attention_influence) for a, b in zip(reference, got))
    return worst, influence


def failure(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: a step that fails reports it and the others go on."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:limit]}"
