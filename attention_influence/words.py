"""English words as datatrove splits them for FineWeb's rules (spaCy's blank English tokenizer), without spaCy.

spaCy splits the text on white space, then peels prefixes (opening brackets and quotes, most
punctuation, currency and other symbols) and suffixes (closing punctuation, "'s", "n't", a final "."
after a lower-case letter, digit or punctuation) off each piece, keeps URLs and its listed
exceptions ("e.g.", "Mr.", emoticons) whole, and splits what is left at infixes (a hyphen between
letters, "..."). This module does the same with regular expressions and the most frequent exceptions.
On the held-out documents of `demo.heldout` and 450 of the demo corpus (752 texts), 93% of the texts
get exactly spaCy's words and the word count differs by 1% at the 99th percentile (measured against
spaCy 3.8.18, docs/filter_and_probes.md). What still differs is spaCy's long tail of exceptions: most
emoticons, abbreviations beyond those below, units after numbers ("135M": "135", "M" there).
"""

from __future__ import annotations

import re
from typing import Iterator

import regex

_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉"
_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"
_AFFIX = regex.escape(_QUOTES + _PUNCT)
_PREFIX = regex.compile(r"^(?:''|\.\.+|…|\+(?![0-9])|[§%=—–$£€¥₹\p{So}" + _AFFIX + "])")
_SUFFIX = regex.compile(r"(?:''|\.\.+|…|['’](?:[sSdm]|re|ll|ve)|n['’]t|[—–\p{So}" + _AFFIX + r"]|(?<=[0-9])\+"
                        r"|(?<=[0-9])[$£€¥₹%]|(?<=[0-9\p{Ll}%²\-+'\"”’`)\]}>!?,:;*&#_])\.|(?<=\p{Lu}\p{Lu})\.)$")
_INFIX = regex.compile(r"\.\.+|…|\p{So}|(?<=[0-9])[+\-*^](?=[0-9-])|(?<=[\p{Ll}'\"”])\.(?=[\p{Lu}'\"“])"
                       r"|(?<=\p{L}),(?=\p{L})|(?<=[\p{L}0-9])(?:-|--|---|—|–)(?=\p{L})|(?<=[\p{L}0-9])[:<>=/](?=\p{L})")
_URL = regex.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.]+")
_CHUNKS = re.compile(r"\S+")  # white space as str.split sees it
# Words spaCy keeps whole (a sample of its English exceptions), and words it splits in two.
EXCEPTIONS = frozenset({
    "e.g.", "E.g.", "i.e.", "I.e.", "vs.", "v.s.", "a.m.", "p.m.", "Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.",
    "Jr.", "Inc.", "Ltd.", "Co.", "co.", "Corp.", "Gen.", "Gov.", "Rev.", "Ph.D.", "D.C.", "U.S.", "and/or", "C++",
    "'s", "'d", "'m", "'ll", "'re", "'ve", "n't", "''",
    "):", ":)", ":(", "(:", ":]", ":[", "[:", ":*", ";)", ":-)", ":-(", ":P", ":p", ":D", "=)", ":/", "<3", "8)",
    *(f"{letter}." for letter in "abcdefghijklmnopqrstuvwxyzäöü"),
})
SPLITS = {"cannot": ("can", "not"), "Cannot": ("Can", "not"), "id": ("i", "d"), "Id": ("I", "d")}


def _pieces(chunk: str) -> list[str]:
    """The words of one run of non-space characters, in order; they join back into it."""
    prefixes, suffixes = [], []
    while chunk and chunk not in EXCEPTIONS:
        match = _PREFIX.search(chunk)
        if match and len(chunk) > 1:
            prefixes.append(match.group())
            chunk = chunk[match.end():]
            continue
        match = _SUFFIX.search(chunk)
        if match and match.start() > 0:
            suffixes.append(match.group())
            chunk = chunk[:match.start()]
            continue
        break
    if chunk in SPLITS:
        middle = list(SPLITS[chunk])
    elif not chunk or chunk in EXCEPTIONS or _URL.fullmatch(chunk):
        middle = [chunk] if chunk else []
    else:
        middle, position = [], 0
        for match in _INFIX.finditer(chunk):
            middle += [piece for piece in (chunk[position:match.start()], match.group()) if piece]
            position = match.end()
        if position < len(chunk):
            middle.append(chunk[position:])
    pieces = prefixes + middle + suffixes[::-1]
    joined, i = [], 0
    while i < len(pieces):  # affixes that together are an exception ("):", "''") stay one word, as in spaCy
        if i + 1 < len(pieces) and pieces[i] + pieces[i + 1] in EXCEPTIONS:
            joined.append(pieces[i] + pieces[i + 1])
            i += 2
        else:
            joined.append(pieces[i])
            i += 1
    return joined


def iter_words(text: str) -> Iterator[tuple[int, str]]:
    """(offset in `text`, word) of each word, in order."""
    for chunk in _CHUNKS.finditer(text):
        offset = chunk.start()
        for piece in _pieces(chunk.group()):
            yield offset, piece
            offset += len(piece)


def split_words(text: str) -> list[str]:
    """The words of `text`, in order (punctuation marks are words too)."""
    return [word for chunk in text.split() for word in _pieces(chunk)]
