"""Held-out documents for the filter's rules: real text no one here wrote, none of it in the demo corpus.

Two domains from the installed packages (the project's pinned dependencies and theirs):
`readme`, the long description each distribution ships in its metadata (its README: Markdown or
reStructuredText prose with lists, tables and code blocks), whole; and `code`, the Python sources
of the third-party packages (not the standard library the demo reads), cut like the demo's corpus
(`demo.corpus`). Deterministic: the same installed packages give the same documents.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sysconfig
from pathlib import Path

from demo.corpus import Document, _chunks


def _doc_id(domain: str, source: str, index: int) -> str:
    return f"{domain}-{hashlib.sha1(f'heldout:{domain}:{source}:{index}'.encode()).hexdigest()[:16]}"


def readmes(min_chars: int = 200) -> list[Document]:
    """Each installed distribution's long description, by distribution name."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name and len(body.strip()) >= min_chars:
            found.setdefault(name, body)
    return [Document(_doc_id("readme", name, 0), "readme", found[name], f"{name} METADATA") for name in sorted(found)]


def code(files: int = 300, max_chars: int = 3000, min_chars: int = 200) -> list[Document]:
    """Chunks of `files` third-party Python files, spread evenly over the sorted paths of site-packages."""
    root = Path(sysconfig.get_paths()["purelib"])
    paths = sorted(p for p in root.rglob("*.py") if "tests" not in p.parts and p.is_file())
    step = max(1, len(paths) // files)
    documents = []
    for path in paths[::step][:files]:
        rel = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        documents += [Document(_doc_id("code", rel, i), "code", chunk, rel)
                      for i, chunk in enumerate(_chunks(text, max_chars)) if len(chunk.strip()) >= min_chars]
    return documents


def heldout_documents(per_domain: int = 200) -> list[Document]:
    """At most `per_domain` documents of each domain, spread evenly over it."""
    picked = []
    for docs in (readmes(), code()):
        step = max(1, len(docs) // per_domain)
        picked += docs[::step][:per_domain]
    return picked
