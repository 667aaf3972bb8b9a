"""benchmarks/gpu.sh --smoke: the GPU benchmark runs end to end on the CPU, so it is ready the day a GPU comes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_smoke_runs_on_the_cpu_and_writes_its_results(tmp_path):
    out = tmp_path / "gpu"
    # One shape and no Spark keep it short; `bash benchmarks/gpu.sh --smoke` runs both shapes and the Spark step.
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--smoke", "--device", "cpu",
                           "--shapes", "paper-1.3b", "--spark", "off", "--budget-s", "120", "--out", str(out)],
                          env={"PY": sys.executable, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    shape = results["shapes"]["paper-1.3b"]
    assert "error" not in shape, shape
    for step in ("fused", "two_pass", "naive"):
        assert shape[step]["tokens"] > 0 and shape[step]["tokens_per_s"] > 0
    assert shape["fused"]["tokens"] == shape["two_pass"]["tokens"]  # the same documents
    from benchmarks import flops

    expected = flops.predicted_fused_ratio(flops.Shape.of_dict(shape), shape["first_masked_layer"],
                                           shape["mean_context"])
    assert shape["predicted_fused_vs_two_pass"] == pytest.approx(expected)
    assert shape["mfu"] is None  # no GPU peak to divide by on the CPU
    profile = shape["profile"]
    assert 0 < profile["head_and_loss_share"] < 1 and profile["layers_s"] > 0
    paths = profile["cross_entropy_paths"]
    assert "row_slices" in paths and any(label.startswith("vocab_blocks_") for label in paths)
    for label, path in paths.items():  # every path scores the batch the way the default one does
        assert path["seconds"] > 0 and path["max_abs_difference_from_default"] < 1e-3, (label, path)
    assert "linear_cross_entropy" in paths  # torch's fused LM head + loss, held to the same float32 reference
    assert all(path["matches_float32"] for path in paths.values()), paths  # float32 on a CPU: every kernel
    assert profile["fastest_matching_cross_entropy"] in paths
    kernels = shape["attention_kernels"]
    assert kernels["gqa"] is True  # the smoke shape has fewer key/value heads than query heads
    for label in ("torch_default", "math"):  # checked against eager attention first, then timed
        assert kernels["choices"][label]["same_losses_as_eager"], kernels
        assert kernels["choices"][label]["tokens_per_s"] > 0
    assert kernels["fastest"] in kernels["choices"]
    assert "aten::" in (out / profile["profile_table"]).read_text()
    lines = dict(line.split("=", 1) for line in (out / "results.txt").read_text().splitlines())
    assert float(lines["paper_1_3b_fused_vs_two_pass"]) > 0
    assert lines["paper_1_3b_fastest_attention"] == kernels["fastest"]
    assert (out / "log.txt").exists()


def test_compiling_all_but_attention_keeps_the_masking_and_compiles_once(real_model):
    """gpu_bench's compile step: the masking hooks live in the attention modules, which stay eager,
    so compiled MLPs and norms give eager's losses (influence included) for batches of several shapes
    without compiling again per batch or per pass (whole compiled layers once ran the masked pass unmasked)."""
    import torch
    import torch._dynamo

    from attention_influence.loading import load_model
    from attention_influence.losses import Scorer
    from benchmarks.gpu.compiling import compiled_hook_free_parts
    from benchmarks.gpu.shapes import SMOLLM2_HEADS

    model, tokenizer = load_model(real_model, dtype="float32", device="cpu")
    texts = ["def add(a, b):\n    return a + b\n" * 6, "The licence grants permission to copy. " * 12,
             "A short one."]
    eager = Scorer(model, tokenizer, SMOLLM2_HEADS, 64, batch_tokens=128).score(texts)
    with compiled_hook_free_parts(model) as modules:
        torch._dynamo.utils.counters.clear()
        compiled = Scorer(model, tokenizer, SMOLLM2_HEADS, 64, batch_tokens=128).score(texts)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert modules == 3 * model.config.num_hidden_layers  # MLP and two norms per layer
    assert 1 <= graphs <= 4, graphs  # one per module kind (dynamic shapes), not one per batch or layer
    for a, b in zip(eager, compiled):
        assert b.loss_full == pytest.approx(a.loss_full, abs=1e-5)
        assert b.loss_masked == pytest.approx(a.loss_masked, abs=1e-5)
        assert abs(a.loss_masked - a.loss_full) > 1e-3  # the heads are masked in both, not just equal
    assert all("forward" not in part.__dict__ for layer in model.model.layers for part in layer.children())


def test_alternate_takes_the_median_of_a_b_pairs_in_order():
    """bench.alternate runs A B A B ... and reports each pair's speed ratio; the median, min and max."""
    from benchmarks.bench import alternate

    calls = []

    def runner(name, seconds):
        times = iter(seconds)

        def run():
            calls.append(name)
            return {"tokens": 100, "seconds": next(times), "cpu_s": 1.0}
        return run

    pair = alternate(runner("a", [1.0, 2.0, 1.0]), runner("b", [2.0, 2.0, 8.0]), pairs=3)
    assert calls == ["a", "b"] * 3
    assert pair["ratios"] == [2.0, 1.0, 8.0]
    assert (pair["ratio"], pair["ratio_min"], pair["ratio_max"]) == (2.0, 1.0, 8.0)


def test_make_bench_runs_on_tiny_shapes_and_prints_median_ratio_lines(tmp_path):
    """benchmarks/bench.py end to end (no Spark: its UDF path is exercised by `make bench`), tiny sizes:
    every ratio line is a median with its min and max beside it."""
    from tests.conftest import REAL_MODEL

    real = REAL_MODEL if (Path(REAL_MODEL) / "config.json").exists() else ""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), "--out", str(tmp_path),
                           "--skip-spark", "--pairs", "2", "--documents", "6", "--max-chars", "300", "--hidden", "32",
                           "--layers", "4", "--heads", "4", "--max-seq-len", "32", "--batch-tokens", "256",
                           "--sweep-documents", "4", "--real-model", real, "--real-documents", "2",
                           "--real-max-chars", "200", "--real-max-seq-len", "32", "--real-batch-tokens", "128"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and " " not in line)
    keys = ["fused_vs_two_pass"] + (["real_fused_vs_two_pass", "real_vs_naive"] if real else [])
    for key in keys:
        low, median, high = (float(lines[k]) for k in (f"{key}_min", key, f"{key}_max"))
        assert 0 < low <= median <= high, (key, low, median, high)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["fused_sweep"]["2"]["ratios"]) == 2
