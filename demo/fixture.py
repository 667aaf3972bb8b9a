"""Build the tiny fixture causal LM (Llama architecture) used by tests and demos.

The fixture must really copy from its context, so it is trained on a mix built
to grow induction / retrieval heads quickly:

* ``repeat`` rows: random token segments each followed by an exact copy (the
  second copy is predictable only by copying);
* ``retrieval`` rows: one solved prompt of head detection's own task per row
  (:func:`attention_influence.retrieval_task.build_task_sample`, the builder of
  ``build_samples``: 3 shots, 32-character alphanumeric keys, prose-sentence
  values), filling the row as the detection prompts fill their context;
* ``text`` rows: windows of real text from :mod:`demo.corpus`.

Pure torch / transformers / tokenizers; deterministic for a given seed and
thread count. ``scripts/build_fixture_model.py`` is the command line.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from attention_influence.retrieval import retrieval_scores
from attention_influence.retrieval_task import build_samples, build_task_sample, key_value_object, value_sentences
from demo.corpus import iter_documents

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]
PRE_TOKEN_PATTERN = r" ?[A-Za-z0-9_]+| ?[^\sA-Za-z0-9_]+|\s+(?!\S)|\s+"


@dataclass
class FixtureRecipe:
    # tokenizer
    vocab_size: int = 2048
    tokenizer_docs: int = 3000  # corpus documents the BPE is trained on (evenly spaced)
    tokenizer_retrieval_texts: int = 3000  # prompts of the earlier task format (`build_sample`)
    # model
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 8
    max_position_embeddings: int = 1024
    # 1e6, not Llama's 1e4: with head dim 16 only the slow RoPE frequencies can match content hundreds of
    # tokens back (at 1e4 the first build copied 94% of tokens 64 back and 13% 300 back).
    rope_theta: float = 1e6
    # data
    seq_len: int = 640  # = the context of the detection test (tests/test_fixture_model.py CONTEXT_TOKENS)
    text_docs: int = 4000  # corpus documents tokenized into the text stream
    mix_repeat: float = 0.45
    mix_retrieval: float = 0.45  # the rest is text
    repeat_min: int = 6
    repeat_max: int = 300  # copies from as far back as the retrieval prompts' values lie
    # phase 1 (copy warm-up): only repeated random segments, short rows, wide batches
    copy_steps: int = 800  # induction forms at about step 700 (repeat loss 2.6 at 700, 1.2 at 800)
    copy_seq_len: int = 128
    copy_batch_size: int = 32
    copy_repeat_max: int = 64
    # optimisation (steps counts both phases)
    steps: int = 1400
    batch_size: int = 8
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 100
    threads: int = 1  # 2 threads on a shared 2-core machine run several times slower (they wait on each other)
    # head dropout: while training, each head's output is zeroed with this probability, except the
    # heads in `kept_heads` ("layer.head,..."), which are never dropped. The model learns to route
    # copying through the heads it can rely on: 0.0 becomes a previous-token head and 1.0 the induction
    # (retrieval) head, so one head carries retrieval and ablating any other single head costs little.
    # Keeping only 1.0 left layer 0 without a head to rely on: induction formed late or copying spread over
    # layer 1 (fixtures/tiny-llama/RECIPE.md and docs/models.md list the builds tried).
    head_dropout: float = 0.5  # layer 0 after the warm-up
    # In layers >= 1 the other heads are dropped more often, so that copying moves to the kept head.
    induction_layer_dropout: float = 0.9
    copy_head_dropout: float = 0.5  # every layer during the copy warm-up
    kept_heads: str = "0.0,1.0"


# --------------------------------------------------------------------------- training prompts

# The fixture's tokenizer is trained on an earlier form of the retrieval task (hex keys, values of random
# words); the recipe still builds those prompts for the tokenizer's training texts. The model is trained on the
# task of attention_influence.retrieval itself (Batches._retrieval_row).
WORDS = (
    "apple river stone light window garden silver paper music winter summer forest "
    "market engine bridge candle doctor island letter mirror number orange pencil "
    "rocket shadow tiger valley wallet yellow anchor basket castle dragon eagle "
    "feather guitar harbor jacket kettle ladder magnet needle ocean palace quartz "
    "rabbit saddle tunnel umbrella violin wagon zebra cloud metal honey pepper "
    "planet signal ticket velvet bottle copper desert fabric glacier hammer insect "
    "jungle kitten lemon marble nickel oyster parrot quiet ribbon salmon timber"
).split()
FIXTURE_INSTRUCTION = "Below is a JSON object of keys and values. Return the value of the requested key.\n"


@dataclass
class FixturePrompt:
    text: str
    needle_span: tuple[int, int]
    answer_span: tuple[int, int]


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(32))


def random_value(rng: random.Random, n_words: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def build_sample(rng: random.Random, n_pairs: int = 12, n_shots: int = 3, value_words: int = 6) -> FixturePrompt:
    """A solved prompt of the fixture's training format (hex keys, random-word values)."""
    pairs = [(random_key(rng), random_value(rng, value_words)) for _ in range(n_pairs)]
    order = list(range(n_pairs))
    rng.shuffle(order)
    shots, target = order[:n_shots], order[n_shots % n_pairs]
    text, needle_span = key_value_object(FIXTURE_INSTRUCTION, pairs, target)  # hex keys: json.dumps adds only quotes
    for i in shots:
        text += f'Key: "{pairs[i][0]}"\nValue: "{pairs[i][1]}"\n'
    text += f'Key: "{pairs[target][0]}"\nValue: "'
    answer_span = (len(text), len(text) + len(pairs[target][1]))
    text += pairs[target][1] + '"'
    return FixturePrompt(text, needle_span, answer_span)


# --------------------------------------------------------------------------- tokenizer

def train_tokenizer(recipe: FixtureRecipe, seed: int, docs: list[str]):
    """Byte-level BPE wrapped as a PreTrainedTokenizerFast that prepends BOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed + 1)
    texts = list(docs) + [build_sample(rng, n_pairs=rng.randint(4, 12)).text
                          for _ in range(recipe.tokenizer_retrieval_texts)]
    tok = Tokenizer(models.BPE())
    # Runs of letters/digits stay together (so hex keys are merged into few tokens), then bytes.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKEN_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=recipe.max_position_embeddings,
    )


# --------------------------------------------------------------------------- data

class Batches:
    """Deterministic mixed batches of (input_ids, labels), each row `seq_len` long."""

    def __init__(self, tokenizer, recipe: FixtureRecipe, seed: int, docs: list[str]):
        self.tok, self.r = tokenizer, recipe
        self.rng = random.Random(seed)
        # The retrieval prompts draw from their own stream (not random.Random(seed), the stream the tests'
        # build_samples(..., seed=0) uses), over the sentences head detection draws its values from.
        self.task_rng = random.Random(seed + 1000)
        self.values = value_sentences(tokenizer)
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.ordinary = [i for i in range(len(tokenizer)) if i not in (self.bos, self.eos, self.pad)]
        stream: list[int] = []
        for enc in tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False):
            stream += enc.ids + [self.eos]
        self.stream = stream

    def _repeat_row(self) -> tuple[list[int], list[int]]:
        """Random segments, each repeated until the next starts; loss only where copying can predict.

        Segment lengths vary row to row, so "repeat what was k tokens back" for a
        fixed k does not work: only content-based copying (induction) lowers the loss.
        """
        n = self.r.seq_len
        ids, labels = [self.bos], [-100]
        while len(ids) < n:
            seg = [self.rng.choice(self.ordinary) for _ in range(self.rng.randint(self.r.repeat_min, self.r.repeat_max))]
            copies = self.rng.randint(2, 4)
            ids += seg * copies
            labels += [-100] * len(seg) + seg * (copies - 1)
        return ids[:n], labels[:n]

    def _copy_row(self) -> tuple[list[int], list[int]]:
        """One random segment repeated to fill the row: the warm-up where induction heads form."""
        n = self.r.copy_seq_len
        seg = [self.rng.choice(self.ordinary) for _ in range(self.rng.randint(self.r.repeat_min, self.r.copy_repeat_max))]
        ids = [self.bos] + (seg * (n // len(seg) + 1))[:n - 1]
        labels = [-100] * (1 + len(seg)) + ids[1 + len(seg):]
        return ids, labels

    def _retrieval_row(self) -> tuple[list[int], list[int]]:
        """One prompt of head detection's task with its answer, as long as the row allows (as
        `build_samples(context_tokens=seq_len)` builds them), then EOS if it fits; loss on every token."""
        n = self.r.seq_len
        sample = build_task_sample(self.tok, self.task_rng, self.values, context_tokens=n)
        ids = self.tok(sample.prompt + sample.answer)["input_ids"]  # BOS first, as the detection pass
        if len(ids) < n:
            ids.append(self.eos)
        pad = n - len(ids)
        return ids + [self.pad] * pad, list(ids) + [-100] * pad

    def _text_row(self) -> tuple[list[int], list[int]]:
        n = self.r.seq_len
        start = self.rng.randrange(0, len(self.stream) - n)
        ids = [self.bos] + self.stream[start:start + n - 1]
        return ids, list(ids)

    def next(self, copy_phase: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        if copy_phase:
            rows = [self._copy_row() for _ in range(self.r.copy_batch_size)]
        for _ in range(0 if copy_phase else self.r.batch_size):
            u = self.rng.random()
            if u < self.r.mix_repeat:
                rows.append(self._repeat_row())
            elif u < self.r.mix_repeat + self.r.mix_retrieval:
                rows.append(self._retrieval_row())
            else:
                rows.append(self._text_row())
        ids = torch.tensor([r[0] for r in rows])
        labels = torch.tensor([r[1] for r in rows])
        labels[:, 0] = -100
        return ids, labels


# --------------------------------------------------------------------------- checks

def repeat_batch(tokenizer, seg_len: int = 64, seeds=(0, 1, 2, 3), vocab_size: int | None = None) -> torch.Tensor:
    """BOS + random segment + the same segment, one row per seed."""
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    ordinary = [i for i in range(vocab_size or len(tokenizer)) if i not in specials]
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(1000 + s)
        seg = [ordinary[i] for i in torch.randint(len(ordinary), (seg_len,), generator=g).tolist()]
        rows.append([tokenizer.bos_token_id] + seg + seg)
    return torch.tensor(rows)


@torch.inference_mode()
def second_copy_loss(model, ids: torch.Tensor) -> float:
    """Mean next-token loss over the second copy of each row (BOS + seg + seg)."""
    seg_len = (ids.shape[1] - 1) // 2
    logits = model(input_ids=ids).logits.float()
    pred = logits[:, seg_len:-1]  # predicts positions seg_len+1 .. end (second copy)
    target = ids[:, seg_len + 1:]
    return float(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1)))


# --------------------------------------------------------------------------- build

def _lr_at(step: int, r: FixtureRecipe) -> float:
    """Warmup, constant through the copy warm-up, then cosine decay."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    if step < r.copy_steps:
        return r.lr
    t = (step - r.copy_steps) / max(1, r.steps - r.copy_steps)
    return r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _recipe_markdown(recipe: FixtureRecipe, seed: int, n_params: int, seconds: float, checks: dict,
                     load: tuple[float, float] | None = None, cpu_seconds: float | None = None) -> str:
    lines = [
        "# tiny-llama fixture",
        "",
        "A tiny `LlamaForCausalLM` with a byte-level BPE tokenizer, built by",
        "`demo/fixture.py` (`build_fixture`) through",
        f"`scripts/build_fixture_model.py --output <dir> --seed {seed}`. It exists for tests and demos",
        "of AttentionInfluence: it is trained to copy from its context, so it has",
        "induction / retrieval heads. It knows little else; do not use it for anything real.",
        "",
        "## Recipe",
        "",
        f"- Tokenizer: byte-level BPE (`tokenizers`), vocab {recipe.vocab_size} incl. specials "
        f"`{BOS}` (prepended by `tokenizer(text)`), `{EOS}`, `{PAD}`; trained on "
        f"{recipe.tokenizer_docs} evenly spaced documents of `demo.corpus.iter_documents()` "
        f"plus {recipe.tokenizer_retrieval_texts} retrieval prompts of an earlier format (hex keys, random-word "
        "values: `demo.fixture.build_sample`).",
        f"- Model: Llama, hidden {recipe.hidden_size}, MLP {recipe.intermediate_size}, {recipe.num_layers} layers x "
        f"{recipe.num_heads} heads (head dim {recipe.hidden_size // recipe.num_heads}), RoPE theta {recipe.rope_theta:g}, "
        f"max positions {recipe.max_position_embeddings}, tied embeddings; {n_params:,} parameters.",
        f"- Data: rows of {recipe.seq_len} tokens (BOS first), per row drawn at random: "
        f"{recipe.mix_repeat:.0%} random-token segments ({recipe.repeat_min}-{recipe.repeat_max} tokens) each "
        "repeated 2-4 times (so copies reach back as far as the retrieval rows' values), loss only on the repeats; "
        f"{recipe.mix_retrieval:.0%} one prompt of head detection's task with its answer "
        "(`attention_influence.retrieval_task.build_task_sample`, the builder of `build_samples`: 3 shots, "
        "32-character alphanumeric keys, prose-sentence values; prompt + answer as long as the row allows, "
        "then EOS; loss on every token; own seeded stream); the rest windows of a token stream of "
        f"{recipe.text_docs} corpus documents (loss on every token).",
        f"- Copy warm-up: the first {recipe.copy_steps} steps use only rows of {recipe.copy_seq_len} tokens made of "
        f"one random segment ({recipe.repeat_min}-{recipe.copy_repeat_max} tokens, length varying by row) repeated "
        f"to fill the row, batch {recipe.copy_batch_size}, loss on the repeats only. Varying the period rules out "
        "copying by fixed offset, so induction heads form (tied embeddings make the copy map easy to learn).",
        f"- Head dropout: while training, each head's output is zeroed per row with probability "
        f"{recipe.copy_head_dropout:g} in the copy warm-up, then {recipe.head_dropout:g} in layer 0 and "
        f"{recipe.induction_layer_dropout:g} in the later layers (where the warm-up's induction heads are), "
        f"except head(s) {recipe.kept_heads} (layer.head), which are never dropped. Copying then "
        "runs through the heads the model can rely on: a previous-token head in layer 0 and the induction "
        "(retrieval) head in layer 1, so one head carries retrieval and ablating any other single head "
        "costs little.",
        f"- Optimisation: AdamW lr {recipe.lr:g} (warmup {recipe.warmup_steps}, cosine to "
        f"{recipe.min_lr_ratio:g}x), weight decay {recipe.weight_decay:g}, clip {recipe.grad_clip:g}, "
        f"batch {recipe.batch_size}, {recipe.steps} steps, seed {seed}, {recipe.threads} CPU threads, fp32.",
        f"- Build time: {seconds / 60:.1f} min on {recipe.threads} CPU thread(s)"
        + (f", {cpu_seconds / 60:.1f} CPU-minutes" if cpu_seconds is not None else "")
        + (f" (1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, on a machine of "
           f"{os.cpu_count()} cores)" if load else "") + ".",
        "",
        "## Checks at build time",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in checks.items()]
    lines += ["", "## Full recipe", "", "```"] + [f"{k} = {v!r}" for k, v in asdict(recipe).items()] + ["```", ""]
    return "\n".join(lines)


def _add_head_dropout(model, recipe: FixtureRecipe, seed: int, rate: dict) -> list:
    """Training-only pre-hooks on each o_proj that zero dropped heads' slices, per row, with probability
    `rate["p"][layer]` (the caller sets it step by step)."""
    if max(recipe.copy_head_dropout, recipe.head_dropout, recipe.induction_layer_dropout) <= 0:
        return []
    kept = {tuple(int(x) for x in item.split(".")) for item in recipe.kept_heads.split(",") if item}
    generator = torch.Generator().manual_seed(seed + 7)
    head_dim = recipe.hidden_size // recipe.num_heads
    handles = []
    for layer_index, layer in enumerate(model.model.layers):
        droppable = torch.tensor([(layer_index, h) not in kept for h in range(recipe.num_heads)])

        def hook(module, args, droppable=droppable, layer_index=layer_index):
            if not module.training:
                return None
            hidden = args[0]
            rows = hidden.shape[0]
            drop = (torch.rand(rows, recipe.num_heads, generator=generator) < rate["p"][layer_index]) & droppable
            keep = (~drop).to(hidden.dtype).repeat_interleave(head_dim, dim=1).unsqueeze(1)
            return (hidden * keep,)
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook))
    return handles


def build_fixture(output_dir: str | Path, seed: int = 0, log: Callable[[str], None] = print, **recipe_kwargs) -> dict:
    """Train tokenizer and model; save both plus RECIPE.md into `output_dir`. Returns the checks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = FixtureRecipe(**recipe_kwargs)
    torch.set_num_threads(recipe.threads)
    started, cpu_started = time.time(), time.process_time()
    load_start = os.getloadavg()[0]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    log("reading corpus ...")
    all_docs = [d.text for d in iter_documents()]
    step = max(1, len(all_docs) // recipe.tokenizer_docs)
    tok_docs = all_docs[::step][:recipe.tokenizer_docs]
    step = max(1, len(all_docs) // recipe.text_docs)
    text_docs = all_docs[1::step][:recipe.text_docs]

    log("training tokenizer ...")
    tokenizer = train_tokenizer(recipe, seed, tok_docs)
    vocab = len(tokenizer)
    log(f"vocab {vocab}")

    random.seed(seed)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=recipe.max_position_embeddings,
        rope_theta=recipe.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters")

    copy_rates = [recipe.copy_head_dropout] * recipe.num_layers
    main_rates = [recipe.head_dropout] + [recipe.induction_layer_dropout] * (recipe.num_layers - 1)
    dropout_rate = {"p": copy_rates}
    dropout_handles = _add_head_dropout(model, recipe, seed, dropout_rate)
    batches = Batches(tokenizer, recipe, seed, text_docs)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.98))
    eval_ids = repeat_batch(tokenizer)
    eval_far_ids = repeat_batch(tokenizer, seg_len=300)  # copying across the distances of the retrieval rows
    running = None
    for step in range(recipe.steps):
        ids, labels = batches.next(copy_phase=step < recipe.copy_steps)
        dropout_rate["p"] = copy_rates if step < recipe.copy_steps else main_rates
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        value = loss.item()
        running = value if running is None else 0.9 * running + 0.1 * value
        every = recipe.eval_every // 2 if step < recipe.copy_steps else recipe.eval_every
        if (step + 1) % every == 0 or step == 0:
            model.eval()
            rep = second_copy_loss(model, eval_ids)
            rep_far = second_copy_loss(model, eval_far_ids)
            model.train()
            log(f"step {step + 1:5d}  loss {running:.3f}  repeat-2nd-copy loss {rep:.3f} (300 back: {rep_far:.3f})  "
                f"lr {_lr_at(step, recipe):.2e}  {time.time() - started:.0f}s")

    for handle in dropout_handles:
        handle.remove()
    model.eval()
    seconds, cpu_seconds = time.time() - started, time.process_time() - cpu_started
    load = (load_start, os.getloadavg()[0])
    log(f"trained in {seconds:.0f}s ({cpu_seconds:.0f} CPU-s); 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    checks = run_checks(model, tokenizer)
    for k, v in checks.items():
        log(f"check {k}: {v}")
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "RECIPE.md").write_text(_recipe_markdown(recipe, seed, n_params, seconds, checks, load,
                                                                        cpu_seconds), encoding="utf-8")
    log(f"saved to {output_dir}; {time.time() - started:.0f}s in all (training, then the checks)")
    return checks


def run_checks(model, tokenizer, context_tokens: int = 640, n_samples: int = 20, masking: str = "zero-output") -> dict:
    """Copy loss on repeated random tokens, detection on the retrieval task as the fixture test runs it
    (20 samples of `context_tokens`, seed 0, teacher-forced), and the copy loss with the selected heads
    masked vs as many random other heads (`masking`: the way head dropout removed heads in training)."""
    from attention_influence.masking import mask_heads
    from attention_influence.retrieval import head_ranking, select_heads

    vocab = model.config.vocab_size
    ids = repeat_batch(tokenizer)
    rep = second_copy_loss(model, ids)
    prev = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        samples = build_samples(tokenizer, n_samples, context_tokens=context_tokens, seed=0)
        scores = retrieval_scores(model, tokenizer, samples)
    finally:
        model.set_attn_implementation(prev)
    heads = select_heads(scores.scores, 0.05)
    with mask_heads(model, heads, mode=masking):
        masked = second_copy_loss(model, ids)
    n_layers, n_heads = scores.scores.shape
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in heads]
    rng = random.Random(0)
    rand_incr = []
    for _ in range(20):
        pick = rng.sample(others, len(heads))
        with mask_heads(model, pick, mode=masking):
            rand_incr.append(second_copy_loss(model, ids) - rep)
    mean_rand = sum(rand_incr) / len(rand_incr)
    return {
        "repeat second-copy loss (64 tokens x2, 4 seeds)": round(rep, 4),
        "0.5 ln(V)": round(0.5 * math.log(vocab), 4),
        f"retrieval value-token accuracy (teacher-forced, context {context_tokens}, {n_samples} samples, seed 0)":
            f"{scores.copied_tokens}/{scores.answer_tokens} = {scores.copied_tokens / max(1, scores.answer_tokens):.3f}",
        "retrieval scores, top 4 heads": {f"{l}.{h}": round(float(scores.scores[l, h]), 3)
                                          for l, h in head_ranking(scores.scores)[:4]},
        "selected heads (top 5%)": {f"{l}.{h}": round(float(scores.scores[l, h]), 3) for l, h in heads},
        f"loss increase masking selected heads ({masking})": round(masked - rep, 4),
        f"mean loss increase masking random heads ({masking}, 20 draws)": round(mean_rand, 4),
        "ratio": round((masked - rep) / max(mean_rand, 1e-9), 2),
    }
