"""The compile step: torch.compile of the decoder layers, kept only where it scores as eager and is faster."""

from __future__ import annotations

import contextlib
import time

from benchmarks.gpu.workload import Workload, differences_from, failure, measure


@contextlib.contextmanager
def compiled_hook_free_parts(model):
    """Within the block, every child of every decoder layer but its attention module runs under
    torch.compile; yields how many modules that is.

    The first compile scheme of this benchmark, kept for comparison: it dates from when the masking
    was forward hooks inside the attention modules, which dynamo does not guard on (run 4b compiled
    whole layers, and the masked pass ran unmasked). The masking is data now (head gates), so
    `compiled_layers` compiles whole decoder layers; this one still compiles the MLP and the norms to
    one graph each, for every batch shape and both halves of the fused pass (tests/test_bench_smoke.py).
    """
    import torch
    import torch._dynamo

    from attention_influence.masking import attention_modules, decoder_layers

    attentions = {id(module) for module in attention_modules(model)}
    parts = [child for layer in decoder_layers(model) for child in layer.children() if id(child) not in attentions]
    torch._dynamo.reset()
    try:
        for part in parts:
            part.forward = torch.compile(part.forward, dynamic=True)
        yield len(parts)
    finally:
        for part in parts:
            part.__dict__.pop("forward", None)
        torch._dynamo.reset()


@contextlib.contextmanager
def compiled_layers(model, mode: str = "default"):
    """Within the block, the decoder layers run under torch.compile in `mode` (attention_influence.compiling:
    whole layers, the head gates read as graph inputs); yields None, or why they stay eager."""
    import torch._dynamo

    from attention_influence.compiling import compile_layers, uncompile_layers

    torch._dynamo.reset()
    try:
        yield compile_layers(model, mode)
    finally:
        uncompile_layers(model)
        torch._dynamo.reset()


def try_compile(work: Workload, eager_tps: float, seconds: float, mode: str = "default") -> dict:
    """`compiled_layers` in `mode`, kept only if it scores the same as eager and beats it. The losses
    and, where it is large enough to tell, the influence are compared with eager before any timing."""
    import torch._dynamo

    check = work.texts[:4]
    eager = work.scorer().score(check)
    try:
        with compiled_layers(work.model, mode) as skipped:
            if skipped:
                return {"mode": mode, "skipped": skipped}
            scorer = work.scorer()
            t = time.perf_counter()
            compiled = scorer.score(check)  # compiles
            compile_s = time.perf_counter() - t
            worst, influence = differences_from(eager, compiled)
            scale = max(abs(a.attention_influence) for a in eager)
            # bfloat16 kernels differ a little; a lost mask moves the influence by about its own size
            same = worst < 0.02 and influence <= max(0.1 * scale, 1e-3)
            out = {"mode": mode, "compile_s": compile_s, "max_relative_loss_difference": worst,
                   "max_influence_difference": influence, "max_influence": scale, "same_losses_as_eager": same}
            if not same:
                return {**out, "kept": False, "skipped": "the compiled layers change the losses"}
            if compile_s > seconds:
                return {**out, "skipped": "compiling took longer than the budget left"}
            measure(scorer, work.texts, work.device)  # the second run counts, as for eager
            result = measure(scorer, work.texts, work.device)
            out["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            return {**out, "tokens_per_s": result["tokens_per_s"], "speedup": result["tokens_per_s"] / eager_tps,
                    "kept": result["tokens_per_s"] > eager_tps}
    except Exception as exc:  # noqa: BLE001 - compile support varies; eager stays
        return {"mode": mode, "error": failure(exc)}
