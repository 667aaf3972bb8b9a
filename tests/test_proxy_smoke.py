"""benchmarks/proxy_experiment.py --smoke: the proxy of the paper's experiment runs end to end on the CPU."""

from __future__ import annotations

import math

from benchmarks import proxy_experiment


def test_proxy_experiment_smoke_trains_each_selection_on_the_same_budget(tmp_path):
    results = proxy_experiment.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)])
    runs = results["runs"]
    assert set(runs) == {"attention_influence", "loss_full", "random"}
    assert {r["training_tokens"] for r in runs.values()} == {results["budget_tokens"]}  # the same budget each
    assert len({tuple(r["first_ids"]) for r in runs.values()}) > 1  # the selectors chose differently
    for r in runs.values():
        assert r["training"]["steps"] >= 1
        for name, loss in r["loss_after"].items():
            assert math.isfinite(loss) and loss > 0
            assert r["change"][name] == loss - results["loss_before"][name] != 0  # training moved the model
    assert results["pool_to_budget"] == results["pool_tokens"] / results["budget_tokens"]
    assert (tmp_path / "table.md").read_text().count("\n| ") == 4  # header + three selectors
