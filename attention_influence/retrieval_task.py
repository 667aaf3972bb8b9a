"""The proxy task of retrieval-head detection (AttentionInfluence, arXiv 2505.07293 §3, Appendix A;
after Wu et al. 2024): its samples, which `retrieval` scores heads on.

The proxy task: a JSON object whose keys are random 32-character alphanumeric
strings and whose values are real English sentences of at most 30 tokens (from
the docstrings of the standard library, `attention_influence.prose`), three
solved questions on other keys, then one key whose value the model must output.
Prompt + answer fill the context (`context_tokens`) as far as whole pairs allow.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from attention_influence.prose import prose_texts

# Not the paper's verbatim text (its appendix is not available here): its instruction as described there --
# extract the value of the requested key from the JSON object and output only the value.
INSTRUCTION = ("Extract the value corresponding to the specified key in the JSON object below. "
               "Output only the value.\n")
N_SHOTS = 3
KEY_CHARS = string.ascii_letters + string.digits
KEY_LENGTH = 32
MAX_VALUE_TOKENS = 30
MIN_VALUE_TOKENS = 6  # shorter "sentences" are mostly fragments ("Return x.")


@dataclass(frozen=True)
class RetrievalSample:
    """One prompt (ending where the answer starts) and the value the model should reproduce."""

    prompt: str
    key: str
    value: str
    needle_span: tuple[int, int]  # characters of the queried value inside the JSON object of `prompt`

    @property
    def answer(self) -> str:
        """What a correct model writes after the prompt: the value and its closing quote."""
        return self.value + '"'


# ------------------------------------------------------------------------------------------ the values

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# A plain sentence: capital first, ordinary characters only (nothing that needs escaping in JSON), a full stop.
_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z0-9 ,;:'()\-]*[A-Za-z0-9)]\.")


def split_sentences(text: str) -> list[str]:
    """The plain prose sentences of a docstring; code examples and indented blocks are skipped."""
    sentences = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.splitlines()
        if not lines or any(line[:1].isspace() or ">>>" in line for line in lines):
            continue
        flat = " ".join(line.strip() for line in lines)
        for sentence in _SENTENCE_BREAK.split(flat):
            if _PLAIN_SENTENCE.fullmatch(sentence) and len(sentence.split()) >= 4:
                sentences.append(sentence)
    return sentences


@lru_cache(maxsize=1)
def prose_sentences() -> tuple[str, ...]:
    """Every distinct plain sentence of the standard library's docstrings, in file order (deterministic)."""
    seen: dict[str, None] = {}
    for text in prose_texts():
        for sentence in split_sentences(text):
            seen.setdefault(sentence)
    return tuple(seen)


def value_sentences(tokenizer) -> list[str]:
    """The sentences that are MIN_VALUE_TOKENS..MAX_VALUE_TOKENS tokens long with this tokenizer."""
    sentences = list(prose_sentences())
    lengths = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    return [s for s, n in zip(sentences, lengths) if MIN_VALUE_TOKENS <= n <= MAX_VALUE_TOKENS]


def alphanumeric_key(rng: random.Random) -> str:
    return "".join(rng.choice(KEY_CHARS) for _ in range(KEY_LENGTH))


# ------------------------------------------------------------------------------------------ the prompts

def key_value_object(instruction: str, pairs: Sequence[tuple[str, str]], target: int) -> tuple[str, tuple[int, int]]:
    """`instruction` and the JSON object of `pairs` (one per line ending), with the characters of
    `target`'s value inside it (the needle)."""
    text = instruction + "{"
    needle_span = (0, 0)
    for i, (key, value) in enumerate(pairs):
        text += (", " if i else "") + json.dumps(key) + ': "'
        if i == target:
            needle_span = (len(text), len(text) + len(value))
        text += value + '"'
    return text + "}\n", needle_span


def format_prompt(pairs: Sequence[tuple[str, str]], shots: Sequence[int], target: int) -> RetrievalSample:
    """Instruction, the JSON object of `pairs`, the solved `shots`, then the open question on `target`."""
    text, needle_span = key_value_object(INSTRUCTION, pairs, target)
    for i in shots:
        text += f'{json.dumps(pairs[i][0])}: "{pairs[i][1]}"\n'
    key, value = pairs[target]
    text += f'{json.dumps(key)}: "'
    return RetrievalSample(text, key, value, needle_span)


def _n_tokens(tokenizer, text: str, special: bool = True) -> int:
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


def build_task_sample(tokenizer, rng: random.Random, values: Sequence[str], context_tokens: int,
                 n_shots: int = N_SHOTS) -> RetrievalSample:
    """One sample whose prompt + answer is as close to `context_tokens` tokens as whole pairs allow, never over."""
    used: set[int] = set()

    def new_pair() -> tuple[str, str]:
        index = rng.randrange(len(values))
        while index in used:
            index = rng.randrange(len(values))
        used.add(index)
        return alphanumeric_key(rng), values[index]

    core = [new_pair() for _ in range(n_shots + 1)]  # the shots, then the target
    answer_tokens = _n_tokens(tokenizer, core[-1][1] + '"', special=False)
    estimate = _n_tokens(tokenizer, format_prompt(core, range(n_shots), n_shots).prompt) + answer_tokens
    if estimate > context_tokens:
        raise ValueError(f"context_tokens={context_tokens} is too short for a {n_shots}-shot prompt of this task "
                         f"(about {estimate} tokens with this tokenizer)")
    fillers = []
    while len(used) < len(values):
        pair = new_pair()
        cost = _n_tokens(tokenizer, f'{json.dumps(pair[0])}: "{pair[1]}", ', special=False)
        if estimate + cost > context_tokens:
            break
        fillers.append(pair)
        estimate += cost
    while True:  # the estimate ignores merges at pair boundaries: drop fillers until the exact count fits
        pairs = core + fillers
        order = list(range(len(pairs)))
        random.Random(rng.random()).shuffle(order)  # the target lands at a random depth
        position = {old: new for new, old in enumerate(order)}
        sample = format_prompt([pairs[i] for i in order], [position[i] for i in range(n_shots)], position[n_shots])
        if _n_tokens(tokenizer, sample.prompt) + answer_tokens <= context_tokens or not fillers:
            break
        fillers.pop()
    if _n_tokens(tokenizer, sample.prompt) + answer_tokens > context_tokens:
        raise ValueError(f"context_tokens={context_tokens} is too short for a {n_shots}-shot prompt of this task")
    return sample


def build_samples(tokenizer, n_samples: int, context_tokens: int, seed: int,
                  n_shots: int = N_SHOTS) -> list[RetrievalSample]:
    """`n_samples` prompts of the task, deterministic given the seed, the tokenizer and this Python's stdlib."""
    if n_samples <= 0:
        raise ValueError(f"samples must be positive, got {n_samples}")
    values = value_sentences(tokenizer)
    if len(values) < 4 * (n_shots + 1):
        raise ValueError(f"only {len(values)} prose sentences of {MIN_VALUE_TOKENS}-{MAX_VALUE_TOKENS} tokens "
                         "found in the corpus")
    rng = random.Random(seed)
    return [build_task_sample(tokenizer, rng, values, context_tokens, n_shots) for _ in range(n_samples)]


def tokens_inside(offsets, span: tuple[int, int]) -> list[int]:
    start, end = span
    return [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]


def encode_sample(tokenizer, sample: RetrievalSample) -> tuple[list[int], list[int]]:
    """(prompt token ids, positions of the value's tokens inside the context): the tokens wholly inside the
    value's characters (a token merged with the closing quote is not one of them)."""
    enc = tokenizer(sample.prompt, return_offsets_mapping=True)
    return list(enc["input_ids"]), tokens_inside(enc["offset_mapping"], sample.needle_span)

