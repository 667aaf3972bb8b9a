"""The standard library's source files and their docstrings: real text on every machine with Python.

Head detection draws the retrieval task's values from these docstrings
(`retrieval_task.prose_sentences`); the demo corpus (`demo/corpus.py`) cuts the same
files into its `code` and `prose` documents. Deterministic: the same Python
install gives the same files, in the same order.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path
from typing import Iterator


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: Path) -> list[Path]:
    skip = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    return sorted(files)


def stdlib_sources() -> Iterator[tuple[Path, str]]:
    """(path, source) of each readable standard-library module, in path order (tests and demos left out)."""
    for path in _python_files(stdlib_dir()):
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def docstrings(source: str) -> list[str]:
    """The module's, classes' and functions' docstrings of at least 80 characters, in tree-walk order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = [ast.get_docstring(n) for n in nodes]
    return [d for d in docs if d and len(d) >= 80]


def prose_texts() -> Iterator[str]:
    """Every docstring of `stdlib_sources()`, whole and in order (the demo corpus's `prose` domain)."""
    for _, source in stdlib_sources():
        yield from docstrings(source)
