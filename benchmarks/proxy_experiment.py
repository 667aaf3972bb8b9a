"""A small proxy of the paper's experiment (issue 19 §5): does training on the selection help?

    python benchmarks/proxy_experiment.py --model models/smollm2-135m-instruct --heads demo-output/heads.json
    python benchmarks/proxy_experiment.py --smoke          # the fixture model on the CPU, about half a minute

1. A pool of documents (the demo's corpus: Python sources, their docstrings, licence texts; three
   domains), scored by the scorer (`attention_influence.losses.Scorer`, the same one the UDF runs).
2. Per selector -- `attention_influence` (highest first), perplexity (`loss_full`, lowest first) and
   `random` (seeded) -- the top 20% within each domain, as `spark_jobs/select.py` keeps it. From each
   selection, best first, the same number of training tokens (`--budget-tokens`; the pool holds at
   least 20x that, or the run says so).
3. Per selector, a fresh copy of the model continues pretraining on its tokens (same steps, same
   order of magnitude of everything), then its mean next-token loss is measured on held-out sets:
   HumanEval's 164 prompts + canonical solutions (none of them in the pool) and held-out pool
   documents (a random tenth, never selected or trained on).

Writes <out>/results.json and <out>/table.md. Meant for a GPU (`benchmarks/gpu.sh`-style one command,
minutes); on 2 CPU cores only `--smoke` is practical, and its numbers show the path runs, not a result.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SELECTORS = ("attention_influence", "loss_full", "random")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="fixture model, tiny pool, a few steps (CPU)")
    p.add_argument("--model", default=str(REPO / "models" / "smollm2-135m-instruct"))
    p.add_argument("--heads", default=str(REPO / "demo-output" / "heads.json"), help="heads JSON of the scorer")
    p.add_argument("--masking", default="uniform")
    p.add_argument("--per-domain", type=int, default=3000, help="pool documents per domain")
    p.add_argument("--max-chars", type=int, default=2000)
    p.add_argument("--fraction", type=float, default=0.2, help="the top share each selector keeps per domain")
    p.add_argument("--budget-tokens", type=int, default=200_000, help="training tokens per selector")
    p.add_argument("--seq-len", type=int, default=1024, help="training sequence length (documents packed)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(REPO / "bench-output" / "proxy"))
    args = p.parse_args(argv)
    if args.smoke:
        args.model = str(REPO / "fixtures" / "tiny-llama")
        args.heads = None  # the fixture's heads are fixed below
        args.per_domain, args.max_chars, args.budget_tokens = 40, 600, 1000
        args.seq_len, args.batch_size, args.lr = 128, 2, 3e-4
    return args


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def choose(scored: list[dict], selector: str, fraction: float, seed: int) -> list[dict]:
    """The top `fraction` of each domain by `selector` (ties to the id), best first over all domains
    (in the order of their selector values), as select.py ranks within a domain."""
    from attention_influence.probes import random_score

    def key(doc):
        if selector == "attention_influence":
            return (-doc["attention_influence"], doc["id"])
        if selector == "loss_full":
            return (doc["loss_full"], doc["id"])
        return (-random_score(doc["id"], seed), doc["id"])

    kept = []
    for domain in sorted({d["domain"] for d in scored}):
        docs = sorted((d for d in scored if d["domain"] == domain), key=key)
        kept.extend(docs[:max(1, math.ceil(fraction * len(docs)))])
    return sorted(kept, key=key)


def training_tokens(tokenizer, docs: list[dict], budget: int) -> list[int]:
    """The selection's documents, best first, as one token stream (EOS between them), cut at `budget`."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    stream: list[int] = []
    for doc in docs:
        stream.extend(tokenizer(doc["text"])["input_ids"] + [eos])
        if len(stream) >= budget:
            break
    return stream[:budget]


def mean_loss(model, tokenizer, texts, device, max_len: int) -> float:
    """Token-weighted mean next-token loss of `texts` (each cut at `max_len` tokens), float32."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text)["input_ids"][:max_len]
            if len(ids) < 2:
                continue
            batch = torch.tensor([ids], device=device)
            logits = model(input_ids=batch).logits.float()
            total += float(F.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum"))
            count += len(ids) - 1
    return total / max(1, count)


def train(model, stream: list[int], args, device) -> dict:
    """One pass over `stream` in sequences of `seq_len`, AdamW, constant learning rate."""
    import torch

    rows = [stream[i:i + args.seq_len] for i in range(0, len(stream) - args.seq_len + 1, args.seq_len)]
    if not rows:
        raise SystemExit(f"--budget-tokens {args.budget_tokens} is less than one sequence of {args.seq_len}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    losses = []
    started = time.perf_counter()
    for start in range(0, len(rows), args.batch_size):
        batch = torch.tensor(rows[start:start + args.batch_size], device=device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    return {"steps": len(losses), "sequences": len(rows), "first_loss": losses[0], "last_loss": losses[-1],
            "seconds": time.perf_counter() - started}


def main(argv=None):
    args = parse_args(argv)
    import torch

    from attention_influence.loading import device_from_flag, load_model
    from attention_influence.losses import Scorer
    from attention_influence.probes import humaneval_probes
    from attention_influence.retrieval import load_heads
    from demo.corpus import sample_corpus

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = device_from_flag(args.device)
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, dtype=dtype, device=device)
    heads = [(1, 0)] if args.smoke else load_heads(args.heads)

    pool = [{"id": d.id, "domain": d.domain, "text": d.text}
            for d in sample_corpus(per_domain=args.per_domain, max_chars=args.max_chars, min_chars=200)]
    rng = random.Random(args.seed)
    rng.shuffle(pool)
    held_out, pool = pool[:len(pool) // 10], pool[len(pool) // 10:]
    humaneval = [p.text for p in humaneval_probes()]
    if args.smoke:
        humaneval = humaneval[:16]
    assert not {d["text"] for d in pool} & set(humaneval), "a HumanEval solution is in the pool"

    started = time.perf_counter()
    scorer = Scorer(model, tokenizer, heads, max_seq_len=args.seq_len, masking=args.masking,
                    batch_tokens=16384 if device.startswith("cuda") else 2048)
    for doc, score in zip(pool, scorer.score([d["text"] for d in pool])):
        doc.update(loss_full=score.loss_full, attention_influence=score.attention_influence, n_tokens=score.n_tokens,
                   status=score.status)
    scored = [d for d in pool if d["status"] == "ok"]
    pool_tokens = sum(d["n_tokens"] for d in scored)
    log(f"scored {len(scored)} pool documents ({pool_tokens} tokens) in {time.perf_counter() - started:.0f} s")
    ratio = pool_tokens / args.budget_tokens

    held_texts = [d["text"] for d in held_out]
    before = {"humaneval": mean_loss(model, tokenizer, humaneval, device, args.seq_len),
              "held_out_pool": mean_loss(model, tokenizer, held_texts, device, args.seq_len)}
    log(f"before training: {before}")
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    runs = {}
    for selector in SELECTORS:
        selection = choose(scored, selector, args.fraction, args.seed)
        stream = training_tokens(tokenizer, selection, args.budget_tokens)
        model.load_state_dict(base_state)
        torch.manual_seed(args.seed)
        fit = train(model, stream, args, device)
        after = {"humaneval": mean_loss(model, tokenizer, humaneval, device, args.seq_len),
                 "held_out_pool": mean_loss(model, tokenizer, held_texts, device, args.seq_len)}
        assert not {d["id"] for d in selection} & {d["id"] for d in held_out}
        runs[selector] = {"selected_documents": len(selection), "training_tokens": len(stream), "training": fit,
                          "first_ids": [d["id"] for d in selection[:5]],
                          "loss_after": after, "change": {k: after[k] - before[k] for k in after},
                          "domains": {dom: sum(d["domain"] == dom for d in selection[:50]) for dom in
                                      sorted({d["domain"] for d in scored})}}
        log(f"{selector}: {json.dumps(runs[selector])}")
    model.load_state_dict(base_state)

    results = {"model": args.model, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
               "dtype": dtype, "smoke": args.smoke, "heads": heads, "masking": args.masking,
               "pool_documents": len(scored), "pool_tokens": pool_tokens, "budget_tokens": args.budget_tokens,
               "pool_to_budget": ratio, "pool_is_20x_budget": ratio >= 20, "held_out_pool_documents": len(held_out),
               "humaneval_documents": len(humaneval), "loss_before": before, "runs": runs,
               "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "table.md").write_text(table(results))
    print(table(results))
    if ratio < 20:
        print(f"note: the pool holds {ratio:.1f}x the budget, under the 20x the experiment asks for", file=sys.stderr)
    return results


def table(results: dict) -> str:
    b = results["loss_before"]
    lines = [f"Pool {results['pool_documents']} documents / {results['pool_tokens']} tokens "
             f"({results['pool_to_budget']:.1f}x the budget of {results['budget_tokens']} training tokens per selector); "
             f"loss before training: HumanEval {b['humaneval']:.4f}, held-out pool {b['held_out_pool']:.4f}.", "",
             "| selector | training tokens | HumanEval loss after (change) | held-out pool loss after (change) |",
             "|---|---|---|---|"]
    for selector, r in results["runs"].items():
        a, c = r["loss_after"], r["change"]
        lines.append(f"| {selector} | {r['training_tokens']} | {a['humaneval']:.4f} ({c['humaneval']:+.4f}) | "
                     f"{a['held_out_pool']:.4f} ({c['held_out_pool']:+.4f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
