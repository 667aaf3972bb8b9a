"""The attention-kernels step: the fused pass with each choice of SDPA kernels, checked against eager."""

from __future__ import annotations

import time

from benchmarks.gpu.workload import Workload, differences_from, failure, measure

ATTENTION_CHOICES_GPU = [None, ("cudnn",), ("flash",), ("efficient",), ("cudnn", "flash")]
ATTENTION_CHOICES_CPU = [None, ("math",), ("flash", "math")]


def attention_kernels(work: Workload, seconds: float) -> dict:
    """The fused pass with each choice of SDPA kernels (`Scorer(attention_backends=...)`), each checked
    first against eager attention (the reference: it computes the attention weights the masking
    definition speaks of) on a few documents, then timed on the same quarter of the documents.
    Grouped-query attention reaches the kernels as `enable_gqa` (transformers' sdpa path, no mask)."""
    model, texts = work.model, work.texts
    check, timed_texts = texts[:4], texts[:max(4, len(texts) // 4)]
    before = model.config._attn_implementation
    if before != "sdpa":
        return {"skipped": f"the model runs {before!r} attention, not SDPA"}
    model.set_attn_implementation("eager")
    try:
        eager = work.scorer().score(check)
    finally:
        model.set_attn_implementation(before)
    choices = ATTENTION_CHOICES_GPU if work.run.on_gpu else ATTENTION_CHOICES_CPU
    gqa = model.config.num_key_value_heads < model.config.num_attention_heads
    out, started = {"gqa": gqa, "choices": {}}, time.perf_counter()
    for choice in choices:
        label = "+".join(choice) if choice else "torch_default"
        if time.perf_counter() - started > seconds:
            out["choices"][label] = {"skipped": "time budget"}
            continue
        try:
            scorer = work.scorer(attention_backends=choice)
            got = scorer.score(check)
            errors = [d.error for d in got if d.status != "ok"]
            if errors:
                out["choices"][label] = {"error": str(errors[0]).splitlines()[0][:200]}
                continue
            worst, influence = differences_from(eager, got)
            same = worst < (0.02 if work.run.on_gpu else 1e-4)
            entry = {"max_relative_loss_difference_from_eager": worst, "max_influence_difference_from_eager": influence,
                     "same_losses_as_eager": same}
            if same:
                measure(scorer, timed_texts, work.device)
                entry.update(measure(scorer, timed_texts, work.device))
            out["choices"][label] = entry
        except Exception as exc:  # noqa: BLE001 - a kernel this device lacks is a finding
            out["choices"][label] = {"error": failure(exc, 200)}
    base = out["choices"].get("torch_default", {}).get("tokens_per_s")
    timed = {k: v for k, v in out["choices"].items() if "tokens_per_s" in v}
    for entry in timed.values():
        if base:
            entry["speedup_vs_torch_default"] = entry["tokens_per_s"] / base
    out["fastest"] = max(timed, key=lambda k: timed[k]["tokens_per_s"]) if timed else None
    if out["fastest"] and base:
        out["fastest_speedup"] = timed[out["fastest"]]["tokens_per_s"] / base
    return out
