"""C4's line rules as FineWeb ran them, and FineWeb's own quality rules, on plain strings (no Spark).

FineWeb (Penedo et al. 2024) filtered Common Crawl with datatrove, in this order: Gopher's
repetition and quality rules (`attention_influence.gopher`), then `C4QualityFilter(
filter_no_terminal_punct=False)`, then `FineWebQualityFilter()`, with their default thresholds, which
are these. The arithmetic follows datatrove 0.10.1 (`pipeline/filters/c4_filters.py`,
`fineweb_quality_filter.py`) line for line, so the rule that fires is the same one.

C4 (Raffel et al. 2020, as datatrove implements it): each line (of `str.splitlines`, stripped) is
dropped if a word (split on white space) is longer than 1,000 characters, has fewer than 3 words, says
"javascript" or a cookie / terms-of-use phrase; Wikipedia citation marks are removed from it. On the
first line kept that holds "lorem ipsum" or a "{" the document is rejected (`c4_lorem_ipsum`,
`c4_curly_bracket`); a document whose kept lines hold fewer than 5 sentences is rejected
(`c4_min_sentences`). FineWeb turned C4's terminal-punctuation line rule off, so it is not here.

One difference: datatrove also writes the kept lines back as the document's text, which later rules
then read. Here a rule only decides; the text is never edited, so the FineWeb rules read the whole
text. And sentences are those of `sentence_spans` (spaCy's rule on our words, see there).

FineWeb: over the non-blank lines (split on "\\n"), rejected when fewer than 12% end with a sentence
terminal (`fineweb_line_punct_ratio`), more than 67% are at most 30 characters long
(`fineweb_short_line_ratio`), the lines that repeat an earlier one hold more than 1% of the characters
(`fineweb_char_dup_ratio`, over the text without newlines), or there are more than 0.3 newlines per
word (`fineweb_list_ratio`).
"""

from __future__ import annotations

import re
import unicodedata

from attention_influence.gopher import SENTENCE_TERMINALS, duplicates
from attention_influence.words import iter_words, split_words

# Rule name -> threshold (None: the rule has none); then the settings the rules read.
C4_RULES: dict[str, float | None] = {"c4_lorem_ipsum": None, "c4_curly_bracket": None, "c4_min_sentences": 5}
C4_SETTINGS: dict[str, float] = {"c4_min_words_per_line": 3, "c4_max_word_length": 1000}
FINEWEB_RULES: dict[str, float] = {"fineweb_line_punct_ratio": 0.12, "fineweb_short_line_ratio": 0.67,
                                   "fineweb_char_dup_ratio": 0.01, "fineweb_list_ratio": 0.3}
FINEWEB_SETTINGS: dict[str, float] = {"fineweb_short_line_length": 30}

_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


def _is_punctuation(word: str) -> bool:
    """spaCy's `is_punct`: every character is Unicode punctuation (category P*)."""
    return all(unicodedata.category(c).startswith("P") for c in word)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence as spaCy's `sentencizer` splits, on the words of `split_words`: one
    sentence, and a new one at each word that is not punctuation after a sentence terminal ("." "!" "?"
    ...); none in a text without words.

    spaCy's tokenizer keeps abbreviations ("e.g.", "Mr.") and "..." as one token, which end no
    sentence there; here their last "." is a word of its own, so "Mr. Smith" is two sentences.
    """
    starts, after_terminal = [], False
    for offset, word in iter_words(text):
        if not starts:
            starts.append(offset)
        if word in SENTENCE_TERMINALS:
            after_terminal = True
        elif after_terminal and not _is_punctuation(word):
            starts.append(offset)
            after_terminal = False
    return [(start, end) for start, end in zip(starts, [*starts[1:], len(text)])]


def c4_rule(text: str, limits: dict[str, float | None] = {**C4_RULES, **C4_SETTINGS}) -> str | None:
    """The first C4 rule `text` breaks (a name of `C4_RULES`), or None. `limits` holds the rules that run
    (a rule missing from it is off) and may override `C4_SETTINGS`."""
    max_word = limits.get("c4_max_word_length", C4_SETTINGS["c4_max_word_length"])
    min_words = limits.get("c4_min_words_per_line", C4_SETTINGS["c4_min_words_per_line"])
    count_them = "c4_min_sentences" in limits
    sentences = 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        if any(len(word) > max_word for word in words):
            continue
        line = _CITATION.sub("", line)
        if len(words) < min_words:
            continue
        lowered = line.lower()
        if "lorem ipsum" in lowered and "c4_lorem_ipsum" in limits:
            return "c4_lorem_ipsum"
        if "javascript" in lowered:
            continue
        if "{" in line and "c4_curly_bracket" in limits:
            return "c4_curly_bracket"
        if any(phrase in lowered for phrase in _POLICY):
            continue
        if count_them:
            sentences += len(sentence_spans(line))
    if count_them and sentences < limits["c4_min_sentences"]:
        return "c4_min_sentences"
    return None


def fineweb_rule(text: str, limits: dict[str, float] = {**FINEWEB_RULES, **FINEWEB_SETTINGS},
                 words: list[str] | None = None) -> str | None:
    """The first FineWeb quality rule `text` breaks (a name of `FINEWEB_RULES`), or None; `limits` as for
    `c4_rule`, `words` is `split_words(text)` when the caller has it."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None  # blank: the filter stage calls it `empty` before any rule
    if "fineweb_line_punct_ratio" in limits:
        ended = sum(1 for line in lines if line[-1] in SENTENCE_TERMINALS)
        if ended / len(lines) < limits["fineweb_line_punct_ratio"]:
            return "fineweb_line_punct_ratio"
    if "fineweb_short_line_ratio" in limits:
        short = limits.get("fineweb_short_line_length", FINEWEB_SETTINGS["fineweb_short_line_length"])
        if sum(1 for line in lines if len(line) <= short) / len(lines) > limits["fineweb_short_line_ratio"]:
            return "fineweb_short_line_ratio"
    if "fineweb_char_dup_ratio" in limits:
        if duplicates(lines)[1] / len(text.replace("\n", "")) > limits["fineweb_char_dup_ratio"]:
            return "fineweb_char_dup_ratio"
    if "fineweb_list_ratio" in limits:
        words = split_words(text) if words is None else words
        if text.count("\n") / len(words) > limits["fineweb_list_ratio"]:
            return "fineweb_list_ratio"
    return None
