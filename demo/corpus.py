"""The demo's sample corpus, built from text that exists on every machine with Python.

Three domains, all real text: standard-library source files (`code`), their
docstrings (`prose`, a module's docstrings together) and the licence texts
shipped with Python and its packages (`legal`). Texts are cut into chunks of at
most `max_chars` characters (at blank lines, else at line ends) so that a domain
holds many documents of a chosen length; `min_chars` drops the short ends.
Deterministic: the same Python install gives the same corpus. The standard-library
files come from `attention_influence.prose`, where head detection reads them too.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from attention_influence.prose import docstrings, stdlib_dir, stdlib_sources


@dataclass(frozen=True)
class Document:
    id: str
    domain: str
    text: str
    source: str


def _pack(pieces: Iterable[str], separator: str, max_chars: int) -> Iterator[str]:
    """Consecutive pieces joined by `separator` into groups of at most about `max_chars` characters
    (a piece longer than that is a group of its own)."""
    group: list[str] = []
    size = 0
    for piece in pieces:
        if size and size + len(piece) > max_chars:
            yield separator.join(group)
            group, size = [], 0
        group.append(piece)
        size += len(piece) + len(separator)
    if group:
        yield separator.join(group)


def _cut_lines(block: str, max_chars: int) -> Iterator[str]:
    """A block of at most `max_chars` characters, or pieces of it cut at line ends (a longer line
    at `max_chars`)."""
    if len(block) <= max_chars:
        yield block
        return
    slices = (line[i:i + max_chars] for line in block.split("\n") for i in range(0, max(len(line), 1), max_chars))
    yield from _pack(slices, "\n", max_chars)


def _chunks(text: str, max_chars: int) -> Iterator[str]:
    """Split on blank lines into pieces of at most `max_chars` characters."""
    blocks = (cut for block in text.split("\n\n") for cut in _cut_lines(block, max_chars))
    return _pack(blocks, "\n\n", max_chars)


def _doc_id(domain: str, source: str, index: int) -> str:
    digest = hashlib.sha1(f"{domain}:{source}:{index}".encode()).hexdigest()[:16]
    return f"{domain}-{digest}"


def _licence_files() -> list[Path]:
    roots = {stdlib_dir(), Path(sysconfig.get_paths()["purelib"]), Path(sys.prefix), Path(sys.base_prefix)}
    names = ("LICENSE", "LICENCE", "COPYING", "NOTICE")
    found: set[Path] = set()
    roots = {r.resolve() for r in roots if r.is_dir()}
    for root in sorted(roots):
        if any(other in root.parents for other in roots):  # walked with the folder that holds it
            continue
        for folder, _, files in os.walk(root):  # names first: a stat per file of a large venv is slow
            for name in files:
                path = Path(folder) / name
                if name.upper().startswith(names) and path.is_file() and path.stat().st_size < 200_000:
                    found.add(path.resolve())
    return sorted(found)


def iter_documents(max_chars: int = 2000, min_chars: int = 1) -> Iterator[Document]:
    """Yield documents of all three domains (each of `min_chars` to `max_chars` characters), in a fixed order."""
    stdlib = stdlib_dir()
    for path, source in stdlib_sources():
        rel = str(path.relative_to(stdlib))
        for i, chunk in enumerate(_chunks(source, max_chars)):
            if chunk.strip() and len(chunk) >= min_chars:
                yield Document(_doc_id("code", rel, i), "code", chunk, rel)
        for i, chunk in enumerate(_chunks("\n\n".join(docstrings(source)), max_chars)):
            if chunk.strip() and len(chunk) >= min_chars:
                yield Document(_doc_id("prose", rel, i), "prose", chunk, rel)
    seen_texts: set[str] = set()
    for path in _licence_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i, chunk in enumerate(_chunks(text, max_chars)):
            key = chunk.strip()
            if len(key) < max(80, min_chars) or key in seen_texts:
                continue
            seen_texts.add(key)
            yield Document(_doc_id("legal", str(path), i), "legal", chunk, str(path))


def sample_corpus(per_domain: int = 1000, max_chars: int = 2000, min_chars: int = 1) -> list[Document]:
    """At most `per_domain` documents of each domain, spread evenly over the sources."""
    by_domain: dict[str, list[Document]] = {}
    for doc in iter_documents(max_chars, min_chars):
        by_domain.setdefault(doc.domain, []).append(doc)
    picked: list[Document] = []
    for domain in sorted(by_domain):
        docs = by_domain[domain]
        step = max(1, len(docs) // per_domain)
        picked.extend(docs[::step][:per_domain])
    return picked
