"""Rules for source code: the "basic" filter of BigCode's code datasets, on plain strings (no Spark).

Codex (Chen et al. 2021) removed files with an average line length over 100, a longest line over
1,000 characters, or few alphanumeric characters; BigCode's preprocessing (`preprocessing/filtering.py`
of bigcode-dataset, used for The Stack and StarCoder, the source of the paper's Python-Edu) applies
these three with the fraction at 0.25. Lines are `str.splitlines()`; the alphanumeric fraction is
over every character (`str.isalnum`). Prose rules do not fit code: indentation, short lines and
repeated tokens are normal there (see docs/filter_and_probes.md).
"""

from __future__ import annotations

# Rule name -> threshold, in BigCode's order.
CODE_RULES: dict[str, float] = {"code_max_line_length": 1000, "code_max_mean_line_length": 100,
                                "code_min_alphanum_frac": 0.25}


def code_rule(text: str, limits: dict[str, float] = CODE_RULES) -> str | None:
    """The first code rule `text` breaks (a name of `CODE_RULES`), or None; `limits` holds the rules that
    run (a rule missing from it is off)."""
    lengths = [len(line) for line in text.splitlines()] or [0]
    if "code_max_line_length" in limits and max(lengths) > limits["code_max_line_length"]:
        return "code_max_line_length"
    if "code_max_mean_line_length" in limits and sum(lengths) / len(lengths) > limits["code_max_mean_line_length"]:
        return "code_max_mean_line_length"
    if "code_min_alphanum_frac" in limits and sum(map(str.isalnum, text)) / len(text) < limits["code_min_alphanum_frac"]:
        return "code_min_alphanum_frac"
    return None
