"""The shapes the GPU benchmark measures: a model of each (real or random weights) and its documents."""

from __future__ import annotations

from pathlib import Path

from benchmarks import flops
from benchmarks.gpu.workload import REPO, RunSettings, Workload

# A fixed, realistic set of 14 heads in layers 17-24 of SmolLM2-135M (about 5% of its 270 heads),
# used where head detection is not run; throughput depends on the first masked layer, not on which heads.
SMOLLM2_HEADS = [(17, 1), (17, 5), (18, 2), (18, 7), (19, 0), (19, 4), (20, 3), (20, 8), (21, 1), (21, 6),
                 (22, 2), (23, 5), (24, 0), (24, 7)]


def shape_config(name: str, run: RunSettings, tokenizer):
    """(transformers config, max_seq_len, masked heads) of a named shape."""
    from transformers import LlamaConfig

    common = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    if run.smoke:
        config = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             tie_word_embeddings=name != "paper-1.3b", **common)
        return config, 64, [(2, 0), (3, 1)]
    if name == "paper-1.3b":
        s = flops.PAPER_1_3B
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=run.kv_heads,
                             max_position_embeddings=run.seq, tie_word_embeddings=False, **common)
        # Which heads the paper masks in its 1.3B model is not published: 5% of 320 heads from mid-depth on.
        return config, run.seq, [(8 + i // 4, i % 4 * 5) for i in range(16)]
    if name == "smollm2-135m":
        s = flops.SMOLLM2_135M
        config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.ffn,
                             num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                             max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000, **common)
        return config, 2048, SMOLLM2_HEADS
    raise SystemExit(f"unknown shape {name!r}")


def shape_workload(name: str, run: RunSettings, fixture_tokenizer) -> Workload:
    """The shape's model without documents yet: SmolLM2's real weights where --real-model has them
    (not in --smoke), else random weights of the shape (throughput does not depend on the values)."""
    import torch
    from transformers import LlamaForCausalLM

    from attention_influence.loading import load_model

    real = Path(run.real_model)
    if name == "smollm2-135m" and not run.smoke and (real / "model.safetensors").exists():
        model, tokenizer = load_model(str(real), dtype=run.dtype, device=run.device)
        return Workload(run, name, model, tokenizer, SMOLLM2_HEADS, 2048, model_dir=real)
    config, max_seq_len, heads = shape_config(name, run, fixture_tokenizer)
    torch.manual_seed(0)
    with torch.device(run.device):
        model = LlamaForCausalLM(config).to(getattr(torch, run.dtype)).eval()
    return Workload(run, name, model, fixture_tokenizer, heads, max_seq_len, model_dir=None)


def documents(tokenizer, target_tokens: int, doc_tokens: int) -> list[str]:
    """Real text (this repository's docs and code, fast to read anywhere) joined into ~`doc_tokens`-token documents."""
    files = sorted(REPO.glob("*.md")) + sorted(REPO.glob("docs/*.md")) + sorted(REPO.glob("attention_influence/*.py")) \
        + sorted(REPO.glob("demo/*.py")) + sorted(REPO.glob("udfs/*.py")) + sorted(REPO.glob("spark_jobs/*.py"))
    pieces = [p for f in files for p in f.read_text(errors="replace").split("\n\n") if p.strip()]
    docs, current, current_tokens, total, i = [], [], 0, 0, 0
    while total < target_tokens:
        piece = pieces[i % len(pieces)]
        i += 1
        current.append(piece)
        current_tokens += len(tokenizer(piece)["input_ids"])
        if current_tokens >= doc_tokens:
            docs.append("\n\n".join(current))
            total += current_tokens
            current, current_tokens = [], 0
    return docs
