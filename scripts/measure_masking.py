"""Loss of the full model and of the masked model under both masking modes, on one real file.

    python scripts/measure_masking.py --model models/smollm2-135m-instruct --text /path/to/bisect.py

Heads: the top `--n-heads` induction heads (attention from a token of the second copy of a random
sequence to the token after its first occurrence) in layers `--layers`, a quick stand-in for detection.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from attention_influence.loading import load_model
from attention_influence.losses import Scorer
from attention_influence.masking import MASKING_MODES


@torch.no_grad()
def induction_scores(model, vocab: int, length: int = 64, seeds: int = 4) -> torch.Tensor:
    """(layers, heads): mean weight a second-copy token puts on the token after its first occurrence."""
    total = None
    for seed in range(seeds):
        rng = random.Random(seed)
        half = [rng.randrange(100, vocab) for _ in range(length)]
        ids = torch.tensor([[1] + half + half])
        attentions = model(input_ids=ids, output_attentions=True).attentions
        queries = torch.arange(length + 1, 2 * length + 1)
        keys = queries - length + 1
        scores = torch.stack([a[0][:, queries, keys].mean(-1) for a in attentions])
        total = scores if total is None else total + scores
    return total / seeds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="models/smollm2-135m-instruct")
    p.add_argument("--text", required=True)
    p.add_argument("--n-heads", type=int, default=14)
    p.add_argument("--layers", default="17-24")
    args = p.parse_args()
    first, last = map(int, args.layers.split("-"))
    model, tokenizer = load_model(args.model, dtype="float32", attn_implementation="eager")
    scores = induction_scores(model, model.config.vocab_size)
    ranked = sorted(((float(scores[l, h]), l, h) for l in range(first, last + 1) for h in range(scores.shape[1])),
                    reverse=True)
    heads = sorted((l, h) for _, l, h in ranked[:args.n_heads])
    model.set_attn_implementation("sdpa")
    text = open(args.text, encoding="utf-8").read()
    result = {"model": args.model, "text": args.text, "heads": [f"{l}.{h}" for l, h in heads],
              "induction_scores": {f"{l}.{h}": round(float(scores[l, h]), 3) for l, h in heads}}
    for masking in MASKING_MODES:
        started = time.time()
        [doc] = Scorer(model, tokenizer, heads, max_seq_len=8192, masking=masking).score([text])
        result[masking] = {"n_tokens": doc.n_tokens, "loss_full": round(doc.loss_full, 4),
                           "loss_masked": round(doc.loss_masked, 4),
                           "attention_influence": round(doc.attention_influence, 4),
                           "seconds": round(time.time() - started, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
