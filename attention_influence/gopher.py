"""Gopher's repetition and quality rules and the exact-duplicate key, on plain strings (no Spark).

Rae et al. 2021 ("Scaling Language Models: Methods, Analysis & Insights from Training Gopher"),
table A1: a document is removed when any of these exceeds its threshold:

    duplicate line fraction                 0.30    duplicate paragraph fraction            0.30
    duplicate line character fraction       0.20    duplicate paragraph character fraction  0.20
    top 2-gram character fraction           0.20    top 3-gram / 4-gram                     0.18 / 0.16
    duplicate 5..10-gram character fraction 0.15, 0.14, 0.13, 0.12, 0.11, 0.10

The arithmetic follows datatrove's `GopherRepetitionFilter` (HF datatrove 0.10.1,
`pipeline/filters/gopher_repetition_filter.py`) line for line, in its order, so the first rule
that fires is the same one and tests can compare the two: paragraphs are split on runs of two or
more newlines (of the stripped text), lines on runs of newlines; a duplicate is every occurrence of
an element after its first; character fractions are over the length of the whole text; the top
n-gram fraction is (length of the most common n-gram joined by spaces) x (its count); duplicate
n-gram characters are counted left to right, skipping past a repeated n-gram (n-grams joined
without spaces).

The quality rules (section A.1.1 of the same paper; `quality_rule`) follow datatrove's
`GopherQualityFilter` the same way; see `QUALITY_RULES`.

Two differences. A most common n-gram that occurs only once counts 0 here (see
`top_n_gram_chars`). And datatrove splits English words with spaCy's blank English tokenizer (a heavy
dependency); the words here are `attention_influence.words`, which approximates it (see there for
how closely).
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections import Counter

import regex

from attention_influence.words import split_words

EMPTY = "empty"
EXACT_DUPLICATE = "exact_duplicate"


# Rule name -> threshold (a fraction of the text), in the order datatrove checks them; table A1.
REPETITION_RULES: dict[str, float] = {
    "gopher_dup_para_frac": 0.30, "gopher_dup_para_char_frac": 0.20,
    "gopher_dup_line_frac": 0.30, "gopher_dup_line_char_frac": 0.20,
    "gopher_top_2_gram": 0.20, "gopher_top_3_gram": 0.18, "gopher_top_4_gram": 0.16,
    **{f"gopher_dup_{n}_gram": limit for n, limit in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10))},
}
TOP_N_GRAMS = (2, 3, 4)
DUP_N_GRAMS = tuple(range(5, 11))


_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_SPACES = re.compile(r"\s+")
# Characters that end a sentence (Unicode's Sentence_Terminal property, from the `regex` package's tables).
SENTENCE_TERMINALS = frozenset(regex.findall(r"\p{Sentence_Terminal}", "".join(map(chr, range(0x110000)))))


def duplicates(elements: list[str]) -> tuple[int, int]:
    """(number, total characters) of the elements that repeat an earlier one."""
    seen: set[str] = set()
    count = chars = 0
    for element in elements:
        if element in seen:
            count += 1
            chars += len(element)
        else:
            seen.add(element)
    return count, chars


def n_grams(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


def top_n_gram_chars(words: list[str], n: int) -> int:
    """Characters covered by the most common n-gram: its length (words joined by spaces) x its count.

    Among n-grams equally common, the first seen counts (as `Counter.most_common`). An n-gram seen
    once is no repetition: 0 (datatrove counts it, so it rejects every short text, e.g. a 3-word
    sentence by its top 2-gram; Gopher removed those by its separate 50-word minimum).
    """
    grams = n_grams(words, n)
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count if count > 1 else 0


def duplicate_n_gram_chars(words: list[str], n: int) -> int:
    """Characters (words joined without spaces) in n-grams that repeat an earlier n-gram, left to right;
    after a repeat the scan jumps past it, so no word is counted twice."""
    seen: set[str] = set()
    chars = index = 0
    while index < len(words) - n + 1:
        gram = "".join(words[index:index + n])
        if gram in seen:
            chars += len(gram)
            index += n
        else:
            seen.add(gram)
            index += 1
    return chars


def repetition_rule(text: str | None, limits: dict[str, float] = REPETITION_RULES,
                    words: list[str] | None = None) -> str | None:
    """The first Gopher repetition rule `text` breaks (a name of `REPETITION_RULES`), or None if it passes.

    `limits` holds the rules that run, each with its threshold (a rule missing from it is off); `words`
    is `split_words(text)` when the caller has it. A null, empty or blank text is `empty`.
    """
    if not text or not text.strip():
        return EMPTY
    paragraphs = _PARAGRAPHS.split(text.strip())
    count, chars = duplicates(paragraphs)
    if _over(limits, "gopher_dup_para_frac", count / len(paragraphs)):
        return "gopher_dup_para_frac"
    if _over(limits, "gopher_dup_para_char_frac", chars / len(text)):
        return "gopher_dup_para_char_frac"
    lines = _LINES.split(text)
    count, chars = duplicates(lines)
    if _over(limits, "gopher_dup_line_frac", count / len(lines)):
        return "gopher_dup_line_frac"
    if _over(limits, "gopher_dup_line_char_frac", chars / len(text)):
        return "gopher_dup_line_char_frac"
    words = split_words(text) if words is None else words
    for n in TOP_N_GRAMS:
        name = f"gopher_top_{n}_gram"
        if name in limits and _over(limits, name, top_n_gram_chars(words, n) / len(text)):
            return name
    for n in DUP_N_GRAMS:
        name = f"gopher_dup_{n}_gram"
        if name in limits and _over(limits, name, duplicate_n_gram_chars(words, n) / len(text)):
            return name
    return None


def _over(limits: dict[str, float], name: str, value: float) -> bool:
    return name in limits and value > limits[name]


def _under(limits: dict[str, float], name: str, value: float) -> bool:
    return name in limits and value < limits[name]


# ---------------------------------------------------------------- quality (Rae et al. 2021, A.1.1)

# Rule name -> threshold, in datatrove's order. Words are `split_words`; the word count, mean length and
# the two bounds on it count only words with a character outside `SYMBOLS`; the hash, ellipsis and
# alphabetic-word ratios are over all of them. Stop words are matched as written (case-sensitive).
QUALITY_RULES: dict[str, float] = {
    "gopher_min_words": 50, "gopher_max_words": 100_000,
    "gopher_min_mean_word_length": 3, "gopher_max_mean_word_length": 10,
    "gopher_max_hash_ratio": 0.1,           # "#" per word
    "gopher_max_ellipsis_ratio": 0.1,       # "..." and "…" per word
    "gopher_max_bullet_lines": 0.9,         # lines starting with "•" or "-"
    "gopher_max_end_ellipsis_lines": 0.3,   # lines ending with "..." or "…"
    "gopher_min_alpha_words": 0.8,          # words with an alphabetic character
    "gopher_min_stop_words": 2,             # distinct stop words present
}
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})

# What a word made only of these is a symbol, not a word: ASCII punctuation and symbols, the typographic
# and CJK marks below, control characters, and every sentence terminal (Unicode Sentence_Terminal).
_MARKS = "—–”“„’´«»…►━∶、，；：？！．（）。〈〉《》「」【】～％１"
_CONTROL = "".join(chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160)))
SYMBOLS = frozenset(string.punctuation + _MARKS + _CONTROL) | SENTENCE_TERMINALS


def quality_rule(text: str, limits: dict[str, float] = QUALITY_RULES, words: list[str] | None = None) -> str | None:
    """The first Gopher quality rule `text` breaks (a name of `QUALITY_RULES`), or None; `limits` and
    `words` as for `repetition_rule`."""
    words = split_words(text) if words is None else words
    if not words:
        return "gopher_min_words" if "gopher_min_words" in limits else None
    real_words = [w for w in words if not SYMBOLS.issuperset(w)]
    if _under(limits, "gopher_min_words", len(real_words)):
        return "gopher_min_words"
    if _over(limits, "gopher_max_words", len(real_words)):
        return "gopher_max_words"
    if real_words:  # none: the mean is undefined and neither bound applies (as numpy's nan compares)
        mean_length = sum(map(len, real_words)) / len(real_words)
        if _under(limits, "gopher_min_mean_word_length", mean_length):
            return "gopher_min_mean_word_length"
        if _over(limits, "gopher_max_mean_word_length", mean_length):
            return "gopher_max_mean_word_length"
    if _over(limits, "gopher_max_hash_ratio", text.count("#") / len(words)):
        return "gopher_max_hash_ratio"
    if _over(limits, "gopher_max_ellipsis_ratio", (text.count("...") + text.count("…")) / len(words)):
        return "gopher_max_ellipsis_ratio"
    lines = text.splitlines()
    bullets = sum(line.lstrip().startswith(("•", "-")) for line in lines)
    if _over(limits, "gopher_max_bullet_lines", bullets / len(lines)):
        return "gopher_max_bullet_lines"
    ellipses = sum(line.rstrip().endswith(("...", "…")) for line in lines)
    if _over(limits, "gopher_max_end_ellipsis_lines", ellipses / len(lines)):
        return "gopher_max_end_ellipsis_lines"
    alpha = sum(any(c.isalpha() for c in w) for w in words)
    if _under(limits, "gopher_min_alpha_words", alpha / len(words)):
        return "gopher_min_alpha_words"
    if _under(limits, "gopher_min_stop_words", len(STOP_WORDS.intersection(words))):
        return "gopher_min_stop_words"
    return None


def normalise(text: str | None) -> str:
    """The text two exact duplicates share: Unicode NFKC, lower case, runs of white space as one space, stripped."""
    if text is None:
        return ""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def content_hash(text: str | None) -> str:
    """sha256 (hex) of the normalised text: equal for exact duplicates up to case and white space."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()
