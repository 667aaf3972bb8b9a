"""Documents -> windows -> token-budget batches (SPEC §3), the plan `losses.Scorer` runs.

* A document is `tokenizer(text)["input_ids"]` (special tokens included), cut
  into consecutive, non-overlapping windows of `max_seq_len`; in each window
  every token but the first is predicted.
* Windows are sorted by length and packed into batches of at most
  `batch_tokens` padded tokens, right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def split_windows(ids: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Consecutive, non-overlapping windows; a trailing window of one token predicts nothing."""
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
    return [list(ids[i:i + max_seq_len]) for i in range(0, len(ids), max_seq_len)]


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices of windows grouped so that rows x longest row <= batch_tokens (one row at least).

    Longest first, so each batch holds windows of similar length and padding
    stays small; callers restore the input order by index.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) + 1) * longest > batch_tokens:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def padding_waste(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the computed token slots that are padding."""
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - real / padded if padded else 0.0


@dataclass
class PreparedTexts:
    """Texts tokenized and cut into windows (`Scorer.prepare`), not yet run through the model."""

    finals: list  # a final DocScore for a document that cannot be scored, else None
    n_tokens: list[int]
    windows: list[list[int]]
    owners: list[int]  # document index of each window

    def __len__(self) -> int:
        return len(self.finals)

    def only(self, doc_index: int) -> "PreparedTexts":
        """The one document `doc_index`, to score it alone."""
        windows = [w for w, owner in zip(self.windows, self.owners) if owner == doc_index]
        return PreparedTexts([self.finals[doc_index]], [self.n_tokens[doc_index]], windows, [0] * len(windows))

