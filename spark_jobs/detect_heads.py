"""Find the retrieval heads of a model (SPEC §2): synthetic task -> per-head scores -> Delta + JSON + heatmap.

    python spark_jobs/detect_heads.py --model fixtures/tiny-llama \
        --output demo-output/head_scores --heads-out demo-output/heads.json
"""

from __future__ import annotations

if __name__ == "__main__":  # run as a script: the repository, not this folder, first on sys.path
    import _script_path  # noqa: F401

import sys
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from spark_jobs import run_log
from spark_jobs.cli import Job, JobError, ModelFlags, flag, fraction, in_flag_words, masking_modes, positive_int
from spark_jobs.cli import run as run_job
from spark_jobs.session import get_spark
from spark_jobs.tables import CONTEXT_TOKENS, MODEL, MODEL_REVISION, SAMPLES, TOP_FRACTION, write_table

HEAD_SCORES_DDL = ("layer INT, head INT, retrieval_score DOUBLE, rank INT, selected BOOLEAN, "
                   "model STRING, detected_at TIMESTAMP")


def decodings():
    from attention_influence.retrieval import DECODINGS

    return DECODINGS


@dataclass(frozen=True, kw_only=True)
class DetectOptions(ModelFlags):
    """What one detection needs: one field per flag (defaults: conf/detect_heads.yaml)."""

    output: str = flag("Delta path or catalog table for the head scores", required=True)
    heads_out: str = flag("heads JSON to write (heads.png is written next to it)", required=True)
    top_fraction: float = flag("share of all heads to select", type=fraction)
    samples: int = flag("3-shot retrieval prompts (the paper: 800)", type=positive_int)
    context_tokens: int = flag("prompt + answer length in tokens, capped at the model's context", type=positive_int)
    seed: int = flag("seed of the synthetic task and of the random-head draws", type=int)
    masking: str = flag("how masked heads are masked in the accuracy check", choices=masking_modes)
    decoding: str = flag("answer tokens scored from the model's predictions on the true value (teacher-forced) "
                         "or from a free greedy answer (Wu et al.)", choices=decodings)
    device: str = flag("auto, cpu or cuda[:N]")


JOB = Job("detect_heads", DetectOptions,
          "Score every attention head by its retrieval score and select the top fraction (SPEC §2).")
build_parser = JOB.parser
parse_options = JOB.parse
options = JOB.options


class SampleProgress:
    """Called after each sample of the synthetic task: a line about every 10% of the samples (at most every
    30 s apart), so a long detection shows it lives. (Scoring's progress, from Spark, is progress.py's.)"""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done = label, total, 0
        self.started = self.last = time.time()

    def __call__(self) -> None:
        self.done += 1
        now = time.time()
        if self.done == self.total or self.done % max(1, self.total // 10) == 0 or now - self.last > 30:
            self.last = now
            left = (now - self.started) / self.done * (self.total - self.done)
            run_log.say(f"{self.label}: {self.done}/{self.total} samples, {now - self.started:.0f}s, "
                        f"~{left:.0f}s left")


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
    from attention_influence.loading import (check_untrusted_model, context_length, load_config, load_model,
                                             model_revision, device_from_flag, resolve_dtype, show_loading_bar)
    from attention_influence.retrieval import (RANDOM_DRAWS, heads_document, masking_accuracies, retrieval_scores,
                                               select_heads)
    from attention_influence.retrieval_task import build_samples

    trust, pickle = bool(options.trust_remote_code), bool(options.allow_pickle_weights)
    check_untrusted_model(options.model, trust, pickle)
    config = load_config(options.model, options.revision, trust)
    device = device_from_flag(options.device)
    show_loading_bar(run_log.verbose())
    model, tokenizer = load_model(options.model, dtype=resolve_dtype(options.dtype, device), device=device,
                                  attn_implementation="eager", revision=options.revision,
                                  trust_remote_code=trust, allow_pickle_weights=pickle)
    context_tokens = min(options.context_tokens, context_length(config, cap=1 << 30))

    started = time.time()
    try:
        samples = build_samples(tokenizer, options.samples, context_tokens, seed=options.seed)
        result = retrieval_scores(model, tokenizer, samples, decoding=options.decoding,
                                  progress=SampleProgress("detect", len(samples)))
        heads = select_heads(result.scores, options.top_fraction)
    except ValueError as exc:
        raise as_flags(exc) from None
    run_log.say(f"scored {result.scores.size} heads on {len(samples)} prompts of <= {context_tokens} tokens "
                f"in {time.time() - started:.1f}s; the model copied {result.copied_tokens}/{result.answer_tokens} "
                f"value tokens")
    started = time.time()
    accuracies = masking_accuracies(model, tokenizer, samples, heads, masking=options.masking, seed=options.seed,
                                    accuracy_full=result.accuracy,
                                    progress=SampleProgress("accuracy", len(samples) * (1 + RANDOM_DRAWS +
                                                                                  (result.accuracy is None))))
    run_log.say(f"task accuracies in {time.time() - started:.1f}s")

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
    write_table(spark.createDataFrame(rows, HEAD_SCORES_DDL), options.output,
                {MODEL: options.model, MODEL_REVISION: detection.revision, TOP_FRACTION: str(options.top_fraction),
                 SAMPLES: str(detection.samples), CONTEXT_TOKENS: str(detection.context_tokens)})


def report(options: DetectOptions, detection: Detection) -> None:
    from attention_influence.retrieval import RANDOM_DRAWS

    heads, accuracies, scores = detection.heads, detection.accuracies, detection.scores
    run_log.result("selected heads (layer.head: retrieval score): " +
                   ", ".join(f"{l}.{h}: {scores[l, h]:.3f}" for l, h in heads))
    run_log.result(f"retrieval-task accuracy (exact value, greedy, {detection.samples} samples): "
                   f"full {accuracies['accuracy_full']:.3f}, {len(heads)} selected heads masked "
                   f"{accuracies['accuracy_masked']:.3f}, {len(heads)} random heads masked "
                   f"{accuracies['accuracy_random_masked']:.3f} (mean of {RANDOM_DRAWS} draws; masking "
                   f"{options.masking})")
    run_log.result(f"wrote {options.output}, {detection.heads_path}, {detection.plot_path}")


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
    write_head_scores(get_spark("attention-influence-detect-heads", (options.output,)), options, detection)
    report(options, detection)
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
