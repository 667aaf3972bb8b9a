"""Gopher's quality rules, C4's line rules (as FineWeb ran them), FineWeb's quality rules, the code rules
and the word splitter: each rule on a crafted document, and each against datatrove's own filter class
(HF datatrove, an independent implementation) on held-out documents no one here wrote
(`demo.heldout`: the READMEs and Python sources of the installed packages), rule by rule at the
published threshold and at stricter ones, so that every comparison sees documents on both sides.

datatrove splits English words with spaCy, which is not installed here; the comparisons hand datatrove
our splitter (`attention_influence.words`) through its own `WordTokenizer` interface, so they test the
rules. The splitter itself is compared with spaCy by `test_words_agree_with_spacy` where spaCy is
installed (not in the test extra: docs/filter_and_probes.md gives the figures).
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from attention_influence import code_rules, fineweb, gopher
from attention_influence.words import split_words

# The comparisons judge each text many times (a rule at several thresholds, two implementations): its words once.
words_of = lru_cache(maxsize=4096)(split_words)
sentences_of = lru_cache(maxsize=65536)(fineweb.sentence_spans)

SENTENCE = "The river runs past the old mill and the children play with their dogs near the water."
CLEAN = "\n".join([SENTENCE, "It is a quiet place that people have loved for a very long time.",
                   "Every summer the town holds a fair, and the whole valley comes to see it.",
                   "Visitors walk to the bridge, eat in the square and stay until the evening.",
                   "Nobody who has been there once forgets the smell of bread from the bakery."])
ENOUGH = " ".join([SENTENCE] * 4)  # 72 words of ordinary prose on one line


def lines_of(line: str, count: int, other: str = SENTENCE) -> str:
    """`count` copies of `line` (numbered so that none repeats) after one ordinary sentence."""
    return "\n".join([other] + [f"{line} {i}" for i in range(count)])


CRAFTED = {
    "gopher_min_words": "The cat sat with the dog on the mat.",
    "gopher_max_words": "the cat " * 50_001,
    "gopher_min_mean_word_length": " ".join(["I am at the sea and so is he; we go to it as we do."] * 5),
    "gopher_max_mean_word_length": " ".join(["The extraordinarily uncharacteristically incomprehensible "
                                             "counterrevolutionaries with institutionalisation"] * 10),
    "gopher_max_hash_ratio": ENOUGH + " #tag" * 12,
    "gopher_max_ellipsis_ratio": ENOUGH + " and so on..." * 20,  # 20 / (72 + 80 words)
    "gopher_max_bullet_lines": "\n".join(f"- the item {i} of that list with the others" for i in range(12)),
    "gopher_max_end_ellipsis_lines": "\n".join([SENTENCE] * 2 + ["and the story goes on and on..."] * 2),
    "gopher_min_alpha_words": ENOUGH + " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "gopher_min_stop_words": " ".join(["A quiet river runs past an old mill; children play near water."] * 8),
    "c4_lorem_ipsum": CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
    "c4_curly_bracket": CLEAN + "\nThe config reads {name: value} for every entry.",
    "c4_min_sentences": "\n".join(CLEAN.splitlines()[:4]),
    "fineweb_line_punct_ratio": "\n".join(line.rstrip(".") for line in CLEAN.splitlines()),
    "fineweb_short_line_ratio": lines_of("A short line", 4),
    "fineweb_char_dup_ratio": CLEAN + "\n" + CLEAN.splitlines()[0],
    "fineweb_list_ratio": "\n".join(["Cats.", "Dogs.", "Birds.", "Fish.", "Mice.", "Owls.", "Bees."]),  # 6 / 14
    "code_max_line_length": "x = [" + ", ".join(map(str, range(300))) + "]\n",
    "code_max_mean_line_length": "\n".join("value = compute(" + ", ".join(["argument"] * 12) + ")" for _ in range(3)),
    "code_min_alphanum_frac": "x = {'a': [(1, 2), (3, 4)], 'b': ((), [], {})}  # ...\n" * 3,
}


def rule_alone(name: str, text: str, threshold: float | None = None) -> str | None:
    """The verdict of rule `name` alone (its group's function, only this rule on, published settings)."""
    for group, check in (({**gopher.QUALITY_RULES}, lambda t, l: gopher.quality_rule(t, l)),
                         ({**fineweb.C4_RULES}, lambda t, l: fineweb.c4_rule(t, {**l, **fineweb.C4_SETTINGS})),
                         ({**fineweb.FINEWEB_RULES}, lambda t, l: fineweb.fineweb_rule(t, {**l, **fineweb.FINEWEB_SETTINGS})),
                         ({**code_rules.CODE_RULES}, code_rules.code_rule)):
        if name in group:
            return check(text, {name: group[name] if threshold is None else threshold})
    raise KeyError(name)


@pytest.mark.parametrize("rule", sorted(CRAFTED))
def test_each_rule_fires_on_its_crafted_document_and_not_on_clean_prose(rule):
    assert rule_alone(rule, CRAFTED[rule]) == rule
    if not rule.startswith("code_"):
        assert rule_alone(rule, CLEAN) is None


def test_every_rule_has_a_crafted_document():
    assert set(CRAFTED) == {*gopher.QUALITY_RULES, *fineweb.C4_RULES, *fineweb.FINEWEB_RULES, *code_rules.CODE_RULES}


def test_clean_prose_and_clean_code_pass_their_groups():
    assert gopher.quality_rule(ENOUGH) is None and fineweb.c4_rule(CLEAN) is None
    assert fineweb.fineweb_rule(CLEAN) is None
    assert code_rules.code_rule("def add(a, b):\n    return a + b\n") is None


def test_measures_by_hand():
    # 9 words, 3 of them symbols ("," "#" "."): 6 real words of mean length 22/6; 1 "#" per 9 words
    text = "Hello, big #world of the cats."
    assert split_words(text) == ["Hello", ",", "big", "#", "world", "of", "the", "cats", "."]
    assert gopher.quality_rule(text, {"gopher_max_hash_ratio": 0.12}) is None  # 1/9 = 0.111
    assert gopher.quality_rule(text, {"gopher_max_hash_ratio": 0.11}) == "gopher_max_hash_ratio"
    assert gopher.quality_rule(text, {"gopher_min_mean_word_length": 3.7}) == "gopher_min_mean_word_length"
    assert gopher.quality_rule(text, {"gopher_min_mean_word_length": 3.6}) is None  # 22/6 = 3.667
    assert gopher.quality_rule(text, {"gopher_min_words": 6}) is None
    assert gopher.quality_rule(text, {"gopher_min_words": 7}) == "gopher_min_words"
    # stop words are counted as written: "The" is not "the"
    assert gopher.quality_rule("The cat of mine.", {"gopher_min_stop_words": 2}) == "gopher_min_stop_words"
    # C4: lines of fewer than 3 words are dropped before "{" is looked for; sentences as spaCy's sentencizer
    assert fineweb.c4_rule("a {b}\n" + CLEAN) is None
    assert len(fineweb.sentence_spans("One. Two! (Three?) four")) == 4
    assert len(fineweb.sentence_spans("Wait... e.g. this, Mr. Smith.")) == 1
    # FineWeb: 1 of 3 non-blank lines ends in a terminal; dup chars over the text without newlines
    assert fineweb.fineweb_rule("a.\nb\n\nc", {"fineweb_line_punct_ratio": 0.34}) == "fineweb_line_punct_ratio"
    assert fineweb.fineweb_rule("ab\nab\ncd", {"fineweb_char_dup_ratio": 0.33}) == "fineweb_char_dup_ratio"  # 2/6
    assert fineweb.fineweb_rule("ab\nab\ncd", {"fineweb_char_dup_ratio": 0.34}) is None
    # code: lines 3 and 7 long (mean 5), 8 alphanumeric characters of 11
    assert code_rules.code_rule("abc\nabcdefg", {"code_max_mean_line_length": 4.9}) == "code_max_mean_line_length"
    assert code_rules.code_rule("abc\nabcdefg", {"code_min_alphanum_frac": 0.91}) == "code_min_alphanum_frac"
    assert code_rules.code_rule("abc\nabcdefg", {"code_min_alphanum_frac": 0.90}) is None  # 10/11 = 0.909


def test_words_as_spacy_splits_them():
    """Expected words are spaCy 3.8's (blank English) for the same strings."""
    assert split_words("Hello, world! It's 3.14 -- e-mail\tme.") == [
        "Hello", ",", "world", "!", "It", "'s", "3.14", "--", "e", "-", "mail", "me", "."]
    assert split_words("def f(x):\n    return x*2") == ["def", "f(x", "):", "return", "x*2"]
    assert split_words("See https://example.org/a-b, e.g. (Mr. Smith) can't... ok") == [
        "See", "https://example.org/a-b", ",", "e.g.", "(", "Mr.", "Smith", ")", "ca", "n't", "...", "ok"]
    assert split_words('"Quoted" words; and/or [links](https://x.io) — yes.') == [
        '"', "Quoted", '"', "words", ";", "and/or", "[", "links](https://x.io", ")", "—", "yes", "."]


def test_character_sets_are_datatroves():
    """Sentence terminals (Unicode's Sentence_Terminal) and symbols equal datatrove's lists, except for
    characters of rare scripts on which the two Unicode versions differ."""
    text = pytest.importorskip("datatrove.utils.text", reason="datatrove is in the test extra")
    for ours, theirs in ((gopher.SENTENCE_TERMINALS, text.TERMINAL_PUNCTUATION), (gopher.SYMBOLS, text.PUNCTUATION_SET)):
        differ = ours ^ set(theirs)
        assert len(differ) <= 20 and all(ord(c) >= 0x1700 for c in differ), sorted(map(hex, map(ord, differ)))


# ---------------------------------------------------------------- against datatrove

@pytest.fixture(scope="module")
def datatrove():
    """datatrove's filter classes and a word tokenizer that is ours, in datatrove's interface."""
    pytest.importorskip("datatrove", reason="datatrove is in the test extra (pip install -e '.[test]')")
    from datatrove.data import Document
    from datatrove.pipeline.filters.c4_filters import C4QualityFilter
    from datatrove.pipeline.filters.fineweb_quality_filter import FineWebQualityFilter
    from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class OurWords(WordTokenizer):
        def word_tokenize(self, text):
            return list(words_of(text))

        def sent_tokenize(self, text):
            return [text[a:b] for a, b in sentences_of(text)]

        def span_tokenize(self, text):
            return list(sentences_of(text))

    words = OurWords("en")

    def verdict(reference, text: str) -> str | None:
        result = reference.filter(Document(text=text, id="x"))
        return None if result is True else result[1]

    return {"verdict": verdict, "gopher": lambda **kw: GopherQualityFilter(language=words, **kw),
            "c4": lambda **kw: C4QualityFilter(filter_no_terminal_punct=False, language=words, **kw),
            "fineweb": lambda **kw: FineWebQualityFilter(language=words, **kw)}


@pytest.fixture(scope="module")
def heldout():
    from demo.heldout import heldout_documents

    documents = [d.text for d in heldout_documents(per_domain=150)]
    assert len(documents) >= 200
    return documents


GOPHER_OFF = dict(min_doc_words=None, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                  max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                  max_non_alpha_words_ratio=None, min_stop_words=None)
C4_OFF = dict(filter_lorem_ipsum=False, filter_curly_bracket=False, min_num_sentences=-1)
FINEWEB_OFF = dict(line_punct_thr=0, short_line_thr=1.0, char_duplicates_ratio=1.0, new_line_ratio=float("inf"))
# Our rules -> (datatrove's filter and the argument that is the same rule, thresholds compared). The first
# threshold is the published one; the others are stricter, so that each rule fires on some documents.
ONE_RULE = {
    "gopher_min_words": ("gopher", "min_doc_words", (50, 400, 1500)),
    "gopher_max_words": ("gopher", "max_doc_words", (100_000, 1000, 300)),
    "gopher_min_mean_word_length": ("gopher", "min_avg_word_length", (3, 4, 4.5)),
    "gopher_max_mean_word_length": ("gopher", "max_avg_word_length", (10, 6, 5)),
    "gopher_max_hash_ratio+gopher_max_ellipsis_ratio": ("gopher", "max_symbol_word_ratio", (0.1, 0.01, 0.002)),
    "gopher_max_bullet_lines": ("gopher", "max_bullet_lines_ratio", (0.9, 0.2, 0.05)),
    "gopher_max_end_ellipsis_lines": ("gopher", "max_ellipsis_lines_ratio", (0.3, 0.01, 0.002)),
    "gopher_min_alpha_words": ("gopher", "max_non_alpha_words_ratio", (0.8, 0.6, 0.5)),
    "gopher_min_stop_words": ("gopher", "min_stop_words", (2, 5, 8)),
    "c4_lorem_ipsum": ("c4", "filter_lorem_ipsum", (True,)),
    "c4_curly_bracket": ("c4", "filter_curly_bracket", (True,)),
    "c4_min_sentences": ("c4", "min_num_sentences", (5, 40)),
    "fineweb_line_punct_ratio": ("fineweb", "line_punct_thr", (0.12, 0.3, 0.6)),
    "fineweb_short_line_ratio": ("fineweb", "short_line_thr", (0.67, 0.4, 0.2)),
    "fineweb_char_dup_ratio": ("fineweb", "char_duplicates_ratio", (0.01, 0.05, 0.002)),
    "fineweb_list_ratio": ("fineweb", "new_line_ratio", (0.3, 0.15, 0.08)),
}


def ours_alone(rules: str, threshold) -> callable:
    names = rules.split("+")
    if names[0].startswith("gopher_"):
        return lambda text: gopher.quality_rule(text, {n: threshold for n in names}, words_of(text))
    if names[0].startswith("c4_"):
        limits = {names[0]: None if threshold is True else threshold, **fineweb.C4_SETTINGS}
        return lambda text: fineweb.c4_rule(text, limits)
    return lambda text: fineweb.fineweb_rule(text, {names[0]: threshold, **fineweb.FINEWEB_SETTINGS}, words_of(text))


@pytest.mark.parametrize("rules", sorted(ONE_RULE))
def test_each_rule_alone_agrees_with_datatrove_on_heldout_documents(rules, datatrove, heldout):
    kind, argument, thresholds = ONE_RULE[rules]
    off = {"gopher": GOPHER_OFF, "c4": C4_OFF, "fineweb": FINEWEB_OFF}[kind]
    documents = heldout + [CRAFTED[name] for name in rules.split("+")]
    fired = 0
    for threshold in thresholds:
        reference = datatrove[kind](**{**off, argument: threshold})
        ours = ours_alone(rules, threshold)
        verdicts = [(datatrove["verdict"](reference, text) is None, ours(text) is None) for text in documents]
        assert [theirs for theirs, _ in verdicts] == [mine for _, mine in verdicts], (rules, threshold)
        fired += sum(not mine for _, mine in verdicts)
    assert 0 < fired < len(documents) * len(thresholds) - 1  # both sides of every rule were compared


DATATROVE_NAMES = {
    "gopher_short_doc": "gopher_min_words", "gopher_long_doc": "gopher_max_words",
    "gopher_below_avg_threshold": "gopher_min_mean_word_length",
    "gopher_above_avg_threshold": "gopher_max_mean_word_length", "gopher_too_many_hashes": "gopher_max_hash_ratio",
    "gopher_too_many_ellipsis": "gopher_max_ellipsis_ratio", "gopher_too_many_bullets": "gopher_max_bullet_lines",
    "gopher_too_many_end_ellipsis": "gopher_max_end_ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher_min_alpha_words", "gopher_enough_stop_words": "gopher_min_stop_words",
    "lorem_ipsum": "c4_lorem_ipsum", "curly_bracket": "c4_curly_bracket", "too_few_sentences": "c4_min_sentences",
    "line_punct_ratio": "fineweb_line_punct_ratio", "short_line_ratio": "fineweb_short_line_ratio",
    "char_dup_ratio": "fineweb_char_dup_ratio", "list_ratio": "fineweb_list_ratio",
}


def test_each_filter_names_the_same_first_rule_as_datatrove(datatrove, heldout):
    """Every rule on at its published threshold, in datatrove's order: the same rule fires first."""
    from collections import Counter

    from demo.corpus import sample_corpus

    documents = heldout + [d.text for d in sample_corpus(per_domain=100, max_chars=1000, min_chars=200)]
    documents += list(CRAFTED.values())
    seen = Counter()
    checks = (("gopher", lambda text: gopher.quality_rule(text, words=words_of(text))), ("c4", fineweb.c4_rule),
              ("fineweb", lambda text: fineweb.fineweb_rule(text, words=words_of(text))))
    for kind, ours in checks:
        reference = datatrove[kind]()
        for text in documents:
            theirs = datatrove["verdict"](reference, text)
            mine = ours(text)
            assert DATATROVE_NAMES.get(theirs, theirs) == mine
            seen[mine] += 1
    assert len(seen) >= 12  # most rules are the first to fire somewhere


def test_words_and_rules_agree_with_datatrove_on_spacy(heldout):
    """Where spaCy is installed (not in the test extra): our words are spaCy's on most held-out documents,
    and datatrove's four filters with their own English tokenizer name the same rule as ours on all."""
    pytest.importorskip("spacy", reason="spaCy is not a test dependency; docs/filter_and_probes.md has the figures")
    from datatrove.data import Document
    from datatrove.pipeline.filters.c4_filters import C4QualityFilter
    from datatrove.pipeline.filters.fineweb_quality_filter import FineWebQualityFilter
    from datatrove.pipeline.filters.gopher_quality_filter import GopherQualityFilter
    from datatrove.pipeline.filters.gopher_repetition_filter import GopherRepetitionFilter
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    spacy_words = load_word_tokenizer("en")
    same = sum(split_words(text) == spacy_words.word_tokenize(text) for text in heldout)
    assert same >= 0.8 * len(heldout)
    pairs = ((GopherRepetitionFilter(), gopher.repetition_rule), (GopherQualityFilter(), gopher.quality_rule),
             (C4QualityFilter(filter_no_terminal_punct=False), fineweb.c4_rule), (FineWebQualityFilter(), fineweb.fineweb_rule))
    for reference, ours in pairs:
        for text in heldout:
            result = reference.filter(Document(text=text, id="x"))
            assert (result is True) == (ours(text) is None)
