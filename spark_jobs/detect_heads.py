"""Find the retrieval heads of a model (SPEC §2): synthetic task -> per-head scores -> Delta + JSON + heatmap.

    python spark_jobs/detect_heads.py --model fixtures/tiny-llama \
        --output demo-output/head_scores --heads-out demo-output/heads.json
"""

from __future__ import annotations

import os
import sys

# Run as `python spark_jobs/<job>.py`, this folder would come first on sys.path and
# spark_jobs/select.py would shadow the standard library's `select`: put the repository there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_HERE)] + [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from spark_jobs import common, table_contract
from spark_jobs.common import (JobError, fraction, get_spark, in_flag_words, new_parser, options_from, parse_flags,
                               positive_int, replace_table)

HEAD_SCORES_DDL = ("layer INT, head INT, retrieval_score DOUBLE, rank INT, selected BOOLEAN, "
                   "model STRING, detected_at TIMESTAMP")


def build_parser():
    from attention_influence.masking import MASKING_MODES
    from attention_influence.retrieval import DECODINGS

    p = new_parser("Score every attention head by its retrieval score and select the top fraction (SPEC §2).")
    p.add_argument("--model", help="local model directory or hub id")
    p.add_argument("--revision", help="model revision on the hub")
    p.add_argument("--output", help="Delta path or catalog table for the head scores")
    p.add_argument("--heads-out", help="heads JSON to write (heads.png is written next to it)")
    p.add_argument("--top-fraction", type=fraction, help="share of all heads to select")
    p.add_argument("--samples", type=positive_int, help="3-shot retrieval prompts (the paper: 800)")
    p.add_argument("--context-tokens", type=positive_int,
                   help="prompt + answer length in tokens, capped at the model's context")
    p.add_argument("--seed", type=int, help="seed of the synthetic task and of the random-head draws")
    p.add_argument("--masking", choices=MASKING_MODES, help="how masked heads are masked in the accuracy check")
    p.add_argument("--decoding", choices=DECODINGS,
                   help="answer tokens scored from the model's predictions on the true value (teacher-forced) "
                        "or from a free greedy answer (Wu et al.)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--device", help="auto, cpu or cuda[:N]")
    return p


@dataclass(frozen=True, kw_only=True)
class DetectOptions:
    """What one detection needs; the flags of build_parser(), one field each (defaults: conf/detect_heads.yaml)."""

    model: str
    revision: str | None
    output: str
    heads_out: str
    top_fraction: float
    samples: int
    context_tokens: int
    seed: int
    masking: str
    decoding: str
    dtype: str
    device: str


def parse_options(argv: list[str] | None = None, settings: dict | None = None) -> DetectOptions:
    """Options from flags over `--config` over `settings` over conf/detect_heads.yaml (the edge of the job)."""
    return options_from(DetectOptions, parse_flags("detect_heads", build_parser(), argv, settings),
                        ("model", "output", "heads_out"))


def options(**settings) -> DetectOptions:
    """Options for a notebook or a test: conf/detect_heads.yaml's defaults with `settings` over them."""
    return parse_options([], settings)


class Progress:
    """A line on stderr about every 10% of the work (at most every 30 s), so a long detection shows it lives."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.started = self.last = time.time()

    def __call__(self) -> None:
        self.done += 1
        now = time.time()
        if self.done == self.total or self.done % max(1, self.total // 10) == 0 or now - self.last > 30:
            self.last = now
            left = (now - self.started) / self.done * (self.total - self.done)
            print(f"{self.label}: {self.done}/{self.total} samples, {now - self.started:.0f}s, ~{left:.0f}s left",
                  file=sys.stderr, flush=True)


def as_flags(exc: ValueError) -> JobError:
    """The core names its parameters (`context_tokens`); a user of this job knows them as flags."""
    return JobError(in_flag_words(str(exc)))


def plot_heatmap(scores, heads, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(figsize=(max(4, n_heads * 0.45 + 2), max(3, n_layers * 0.3 + 1.5)))
    image = ax.imshow(scores, aspect="auto", cmap="viridis", origin="lower")
    for layer, head in heads:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    ax.set_xticks(range(0, n_heads, max(1, n_heads // 16)))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 16)))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="retrieval score")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class Detection:
    """A detection's results: per-head scores, the selected heads, the task accuracies and settings."""

    scores: object  # numpy [n_layers, n_heads]
    heads: list[tuple[int, int]]
    accuracies: dict
    revision: str
    samples: int
    context_tokens: int
    heads_path: Path
    plot_path: Path


def detect(options: DetectOptions) -> Detection:
    """Score every head on the synthetic task, select the top fraction, check the selection by masking it,
    and write the heads JSON and its heatmap. Needs no Spark."""
    from attention_influence.loading import (context_length, load_config, load_model, model_revision,
                                             device_from_flag, resolve_dtype)
    from attention_influence.retrieval import (RANDOM_DRAWS, build_samples, heads_document, masking_accuracies,
                                               retrieval_scores, select_heads)

    config = load_config(options.model, options.revision)
    device = device_from_flag(options.device)
    model, tokenizer = load_model(options.model, dtype=resolve_dtype(options.dtype, device), device=device,
                                  attn_implementation="eager", revision=options.revision)
    context_tokens = min(options.context_tokens, context_length(config, cap=1 << 30))

    started = time.time()
    try:
        samples = build_samples(tokenizer, options.samples, context_tokens, seed=options.seed)
        result = retrieval_scores(model, tokenizer, samples, decoding=options.decoding,
                                  progress=Progress("detect", len(samples)))
        heads = select_heads(result.scores, options.top_fraction)
    except ValueError as exc:
        raise as_flags(exc) from None
    print(f"scored {result.scores.size} heads on {len(samples)} prompts of <= {context_tokens} tokens "
          f"in {time.time() - started:.1f}s; the model copied {result.copied_tokens}/{result.answer_tokens} "
          f"value tokens", file=sys.stderr)
    started = time.time()
    accuracies = masking_accuracies(model, tokenizer, samples, heads, masking=options.masking, seed=options.seed,
                                    accuracy_full=result.accuracy,
                                    progress=Progress("accuracy", len(samples) * (1 + RANDOM_DRAWS +
                                                                                  (result.accuracy is None))))
    print(f"task accuracies in {time.time() - started:.1f}s", file=sys.stderr)

    revision = model_revision(options.model, options.revision)
    document = heads_document(options.model, revision, options.top_fraction, heads, result.scores, **accuracies,
                              samples=len(samples), context_tokens=context_tokens, masking=options.masking,
                              decoding=options.decoding, seed=options.seed)
    heads_path = Path(options.heads_out)
    heads_path.parent.mkdir(parents=True, exist_ok=True)
    heads_path.write_text(json.dumps(document, indent=2) + "\n")
    plot_path = heads_path.with_suffix(".png")
    plot_heatmap(result.scores, heads, plot_path, f"retrieval scores: {options.model} (selected in red)")
    return Detection(scores=result.scores, heads=heads, accuracies=accuracies, revision=revision,
                     samples=len(samples), context_tokens=context_tokens, heads_path=heads_path, plot_path=plot_path)


def write_head_scores(spark, options: DetectOptions, detection: Detection) -> None:
    """One row per head in ranking order, the selected ones flagged; the task's settings as table properties."""
    from attention_influence.retrieval import head_ranking

    detected_at = datetime.now(timezone.utc).replace(tzinfo=None)
    selected = set(detection.heads)
    rows = [(layer, head, float(detection.scores[layer, head]), rank, (layer, head) in selected, options.model,
             detected_at)
            for rank, (layer, head) in enumerate(head_ranking(detection.scores), 1)]
    replace_table(spark.createDataFrame(rows, HEAD_SCORES_DDL), options.output,
                  {table_contract.MODEL: options.model, table_contract.MODEL_REVISION: detection.revision,
                   table_contract.TOP_FRACTION: str(options.top_fraction),
                   table_contract.SAMPLES: str(detection.samples),
                   table_contract.CONTEXT_TOKENS: str(detection.context_tokens)})


def report(options: DetectOptions, detection: Detection) -> None:
    from attention_influence.retrieval import RANDOM_DRAWS

    heads, accuracies, scores = detection.heads, detection.accuracies, detection.scores
    print("selected heads (layer.head: retrieval score): " +
          ", ".join(f"{l}.{h}: {scores[l, h]:.3f}" for l, h in heads))
    print(f"retrieval-task accuracy (exact value, greedy, {detection.samples} samples): "
          f"full {accuracies['accuracy_full']:.3f}, {len(heads)} selected heads masked "
          f"{accuracies['accuracy_masked']:.3f}, {len(heads)} random heads masked "
          f"{accuracies['accuracy_random_masked']:.3f} (mean of {RANDOM_DRAWS} draws; masking {options.masking})")
    print(f"wrote {options.output}, {detection.heads_path}, {detection.plot_path}")


def run(spark, options: DetectOptions) -> Detection:
    """Detect, write the head-scores table on `spark`, print the selection and its accuracies."""
    detection = detect(options)
    write_head_scores(spark, options, detection)
    report(options, detection)
    return detection


def main(argv=None):
    """Flags -> options; Spark starts only once the model's work is done, to write the table."""
    options = parse_options(argv)
    detection = detect(options)
    write_head_scores(get_spark("attention-influence-detect-heads"), options, detection)
    report(options, detection)
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main))
