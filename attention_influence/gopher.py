"""Gopher's repetition rules and the exact-duplicate key, on plain strings (no Spark).

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

Two differences. A most common n-gram that occurs only once counts 0 here (see
`top_n_gram_chars`). And datatrove splits English words with spaCy's blank English tokenizer (a heavy
dependency); `split_words` here is a small regular expression that gives the same words on
ordinary prose (runs of letters/digits with inner apostrophes, hyphens or dots; every other
non-space character alone). It differs from spaCy on contractions ("don't" is one word here, two
for spaCy) and some abbreviations, which moves the n-gram counts by a word here and there.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

EMPTY = "empty"
EXACT_DUPLICATE = "exact_duplicate"


@dataclass(frozen=True)
class GopherThresholds:
    """Table A1 of Rae et al. 2021; None switches a fraction rule off."""

    dup_line_frac: float | None = 0.30
    dup_para_frac: float | None = 0.30
    dup_line_char_frac: float | None = 0.20
    dup_para_char_frac: float | None = 0.20
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


GOPHER = GopherThresholds()


def rule_names(thresholds: GopherThresholds = GOPHER) -> list[str]:
    """Every name `repetition_rule` can return, in the order the rules are checked, then `empty`."""
    return (["gopher_dup_para_frac", "gopher_dup_para_char_frac", "gopher_dup_line_frac", "gopher_dup_line_char_frac"]
            + [f"gopher_top_{n}_gram" for n, _ in thresholds.top_n_grams]
            + [f"gopher_dup_{n}_gram" for n, _ in thresholds.dup_n_grams] + [EMPTY])


_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_WORDS = re.compile(r"\w+(?:['’.\-]\w+)*|[^\w\s]")
_SPACES = re.compile(r"\s+")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks, in order (see the module docstring for how this relates to spaCy's)."""
    return _WORDS.findall(text)


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


def repetition_rule(text: str | None, thresholds: GopherThresholds = GOPHER) -> str | None:
    """The first Gopher repetition rule `text` breaks (a name of `rule_names`), or None if it passes.

    A null, empty or blank (white space only) text is `empty`.
    """
    if not text or not text.strip():
        return EMPTY
    t = thresholds
    paragraphs = _PARAGRAPHS.split(text.strip())
    count, chars = duplicates(paragraphs)
    if t.dup_para_frac and count / len(paragraphs) > t.dup_para_frac:
        return "gopher_dup_para_frac"
    if t.dup_para_char_frac and chars / len(text) > t.dup_para_char_frac:
        return "gopher_dup_para_char_frac"
    lines = _LINES.split(text)
    count, chars = duplicates(lines)
    if t.dup_line_frac and count / len(lines) > t.dup_line_frac:
        return "gopher_dup_line_frac"
    if t.dup_line_char_frac and chars / len(text) > t.dup_line_char_frac:
        return "gopher_dup_line_char_frac"
    words = split_words(text)
    for n, limit in t.top_n_grams:
        if top_n_gram_chars(words, n) / len(text) > limit:
            return f"gopher_top_{n}_gram"
    for n, limit in t.dup_n_grams:
        if duplicate_n_gram_chars(words, n) / len(text) > limit:
            return f"gopher_dup_{n}_gram"
    return None


def normalise(text: str | None) -> str:
    """The text two exact duplicates share: Unicode NFKC, lower case, runs of white space as one space, stripped."""
    if text is None:
        return ""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def content_hash(text: str | None) -> str:
    """sha256 (hex) of the normalised text: equal for exact duplicates up to case and white space."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()
