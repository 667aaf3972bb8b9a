"""Per-token losses of the full and the head-masked model, and the documents' scores (SPEC §3).

Tokens -> windows -> token-budget batches (`windows`) -> per-token losses -> documents.

* Document losses are token-weighted means over all predicted tokens of the
  document's windows.
* Under causal attention a real token never sees a pad to its right, so
  padding cannot change a result; the pads' outputs are dropped.
* The fused pass (`fused_pass`) runs the layers below the first masked layer
  once, then continues full and masked copies of the batch side by side (2x
  rows); the two-pass variant runs the model twice. Both give the same losses.
* The LM head + cross-entropy and the attention run on the kernels chosen in
  `kernels`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
from torch.nn.attention import sdpa_kernel

from attention_influence.compiling import compile_layers
from attention_influence.fused_pass import _fused_hidden, fan_out
from attention_influence.kernels import _token_losses, checked_attention_backends, checked_loss_kernel
from attention_influence.masking import DEFAULT_MASKING, Head, HeadGates, checked_heads
from attention_influence.windows import PreparedTexts, plan_batches, split_windows

STATUS_OK, STATUS_EMPTY, STATUS_ERROR = "ok", "empty", "error"


@dataclass
class DocScore:
    """Score of one document; losses are mean nats per predicted token."""

    n_tokens: int | None
    loss_full: float | None = None
    loss_masked: float | None = None
    status: str = STATUS_OK
    error: str | None = None
    token_loss_full: list[float] | None = None
    token_loss_masked: list[float] | None = None

    @property
    def attention_influence(self) -> float | None:
        if self.status != STATUS_OK:
            return None
        return (self.loss_masked - self.loss_full) / self.loss_full


def batch_losses(model, input_ids: torch.Tensor, heads: Sequence[Head], fused: bool = True,
                 masking: str = DEFAULT_MASKING):
    """Per-token losses (rows, length-1) of the full and the masked model for a right-padded batch.

    Either masking mode touches only the masked layers, so the fused pass shares the layers below the
    first of them. Checks `heads` and `masking` as `mask_heads` does; the scorer, which checked them
    once, calls `_batch_losses`."""
    if heads:
        heads = checked_heads(model, heads, masking)
    return _batch_losses(model, input_ids, heads, fused, masking)


def _batch_losses(model, input_ids: torch.Tensor, heads: list[Head], fused: bool, masking: str,
                  gates: HeadGates | None = None, loss_kernel: str = "auto"):
    """`batch_losses` for checked `heads`; `gates` are those of `heads` and `masking` (the scorer builds
    them once; without them they are built here); `loss_kernel` as `_token_losses`."""
    targets = input_ids[:, 1:]
    base = model.base_model
    if not heads:
        hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        full = _token_losses(model, hidden, targets, kernel=loss_kernel)
        return full, full.clone()
    gates = gates or HeadGates(model, heads, masking)
    if not fused:
        hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        full = _token_losses(model, hidden, targets, kernel=loss_kernel)
        with gates.closed():
            hidden = base(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        return full, _token_losses(model, hidden, targets, kernel=loss_kernel)
    rows = input_ids.shape[0]
    both = _token_losses(model, _fused_hidden(model, input_ids, heads, masking, gates), torch.cat([targets, targets]),
                         kernel=loss_kernel)
    return both[:rows], both[rows:]


def _in_order(count: int, parts) -> list:
    """The DocScores of `parts` ((index, DocScore) lists) as one list in document order."""
    results: list = [None] * count
    for part in parts:
        for doc_index, doc in part:
            results[doc_index] = doc
    return results


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclass
class Scorer:
    """`Scorer(model, tokenizer, heads, max_seq_len).score(texts) -> list[DocScore]`.

    Results do not depend on `batch_tokens`, on `fused`, or on which texts
    share a call (float32: equal to 1e-5).
    """

    model: torch.nn.Module
    tokenizer: object
    heads: Sequence[Head]
    max_seq_len: int
    batch_tokens: int = 16384
    fused: bool = True
    masking: str = DEFAULT_MASKING  # "uniform" (the paper) or "zero-output"; see attention_influence.masking
    token_losses: bool = False
    max_chars: int = 1_000_000
    on_batch: Callable[[int, int], None] | None = None  # (windows done, windows total)
    # torch.compile of the decoder layers (attention_influence.compiling): None (eager, the default: not
    # measured faster on a CPU, docs/benchmarks.md), "default", "reduce-overhead" (CUDA graphs; on a CPU
    # it stays eager and `compile_skipped` says why) or "max-autotune-no-cudagraphs".
    compile_mode: str | None = None
    # LM head + cross-entropy: LOSS_KERNELS ("auto": vocabulary blocks on a CPU, row slices elsewhere).
    loss_kernel: str = "auto"
    # SDPA kernels the attention may use, in order of preference (ATTENTION_BACKENDS names, e.g.
    # ("cudnn", "flash") on Hopper); None: torch's own choice. Needs attn_implementation="sdpa".
    attention_backends: tuple[str, ...] | None = None
    stats: dict = field(default_factory=lambda: {"real_tokens": 0, "padded_tokens": 0, "oom_splits": 0})

    def __post_init__(self):
        self.heads = checked_heads(self.model, self.heads, self.masking, "masking")
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {self.max_seq_len}")
        self.batch_tokens = max(int(self.batch_tokens), self.max_seq_len)
        self.pad_id = self.tokenizer.pad_token_id or 0
        # Masking is data installed once, here: the gates (set per pass; a batch has at most
        # batch_tokens / 2 rows, so their rows buffer never grows) and the fused pass's fan-out.
        self.gates = HeadGates(self.model, self.heads, self.masking, max_rows=self.batch_tokens)
        fan_out(self.model)
        self.compile_skipped = compile_layers(self.model, self.compile_mode) if self.compile_mode else None
        self.loss_kernel = checked_loss_kernel(self.model, self.loss_kernel)
        if isinstance(self.attention_backends, str):
            self.attention_backends = (self.attention_backends,)
        self._attention_kernels = checked_attention_backends(self.model, self.attention_backends)

    def tokenize(self, text) -> tuple[list[int] | None, DocScore | None]:
        """Token ids, or the final DocScore for a document that cannot be scored."""
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                return None, DocScore(None, status=STATUS_ERROR, error=f"undecodable: {exc}")
        if text is None or (isinstance(text, float) and math.isnan(text)):
            return None, DocScore(None, status=STATUS_EMPTY, error="text is null")
        if not isinstance(text, str):
            return None, DocScore(None, status=STATUS_ERROR, error=f"text is {type(text).__name__}, not a string")
        if not text.strip():
            return None, DocScore(0, status=STATUS_EMPTY, error="text is blank")
        if len(text) > self.max_chars:
            return None, DocScore(None, status=STATUS_ERROR, error=f"oversized: {len(text)} characters > max_chars {self.max_chars}")
        try:
            ids = list(self.tokenizer(text)["input_ids"])
        except Exception as exc:  # a tokenizer may reject odd text; that row fails alone
            return None, DocScore(None, status=STATUS_ERROR, error=f"tokenizer failed: {exc.__class__.__name__}: {exc}"[:500])
        if len(ids) < 2:
            return None, DocScore(len(ids), status=STATUS_EMPTY, error=f"fewer than 2 tokens ({len(ids)})")
        return ids, None

    def score(self, texts: Sequence) -> list[DocScore]:
        return self.finish(self.prepare(texts))

    def prepare(self, texts: Sequence) -> "PreparedTexts":
        """Tokenize and cut into windows: the CPU half of `score`, which a caller may run ahead on a thread."""
        finals: list[DocScore | None] = []
        n_tokens: list[int] = []
        windows: list[list[int]] = []
        owners: list[int] = []
        for doc_index, text in enumerate(texts):
            ids, final = self.tokenize(text)
            finals.append(final)
            n_tokens.append(len(ids) if ids is not None else 0)
            if ids is None:
                continue
            for window in split_windows(ids, self.max_seq_len):
                if len(window) >= 2:
                    windows.append(window)
                    owners.append(doc_index)
        return PreparedTexts(finals, n_tokens, windows, owners)

    def finish(self, prepared: "PreparedTexts") -> list[DocScore]:
        """Run the model on prepared windows; fresh DocScores each call, so a failed call can be retried."""
        return _in_order(len(prepared), self.finish_in_parts(prepared, seconds=None))

    def finish_in_parts(self, prepared: "PreparedTexts", seconds: float | None = None
                        ) -> Iterator[list[tuple[int, DocScore]]]:
        """`finish`, yielding (document index, DocScore) of the documents completed so far every
        `seconds` of work (None: once, at the end), so a caller can hand finished rows on while the
        rest of the batches run. A part may be empty (no document completed in it): the work went on,
        which a caller can report (`stats`). Batches are planned over all windows, as in `finish`."""
        import time

        per_doc: dict[int, list[int]] = {}
        for w, doc_index in enumerate(prepared.owners):
            per_doc.setdefault(doc_index, []).append(w)
        ready = [(i, final if final is not None else DocScore(n))
                 for i, (final, n) in enumerate(zip(prepared.finals, prepared.n_tokens)) if i not in per_doc]
        left = {doc_index: len(ws) for doc_index, ws in per_doc.items()}
        losses: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        last = time.perf_counter()
        for batch in self._window_batches(prepared.windows):
            for window, full, masked in batch:
                losses[window] = (full, masked)
                doc_index = prepared.owners[window]
                left[doc_index] -= 1
                if not left[doc_index]:
                    ready.append((doc_index, self._doc_score(prepared, doc_index, per_doc[doc_index], losses)))
            if seconds is not None and time.perf_counter() - last >= seconds:
                yield ready
                ready, last = [], time.perf_counter()
        if ready:
            yield ready

    def _doc_score(self, prepared: "PreparedTexts", doc_index: int, windows: list[int], losses: dict) -> DocScore:
        full = torch.cat([losses[w][0] for w in windows]).double()
        masked = torch.cat([losses.pop(w)[1] for w in windows]).double()
        doc = DocScore(prepared.n_tokens[doc_index])
        doc.loss_full, doc.loss_masked = float(full.mean()), float(masked.mean())
        if not (math.isfinite(doc.loss_full) and math.isfinite(doc.loss_masked)) or doc.loss_full <= 0:
            doc.status, doc.error = STATUS_ERROR, f"loss not usable (full={doc.loss_full}, masked={doc.loss_masked})"
        if self.token_losses:
            doc.token_loss_full, doc.token_loss_masked = full.float().tolist(), masked.float().tolist()
        return doc

    def finish_isolated(self, prepared: "PreparedTexts") -> list[DocScore]:
        """`finish`, but if the call fails as a whole (anything but an out-of-memory, which
        `window_losses` splits), each document is run alone from its windows: a document that
        breaks the model becomes one `error` DocScore and the others are scored, in order."""
        return _in_order(len(prepared), self.finish_isolated_in_parts(prepared, seconds=None))

    def finish_isolated_in_parts(self, prepared: "PreparedTexts", seconds: float | None = None
                                 ) -> Iterator[list[tuple[int, DocScore]]]:
        """`finish_in_parts` with `finish_isolated`'s isolation: when the batched run fails, each
        document not yet yielded is run alone (a part each), so every document comes out once."""
        done: set[int] = set()
        try:
            for part in self.finish_in_parts(prepared, seconds):
                done.update(i for i, _ in part)
                yield part
        except Exception:  # noqa: BLE001 - isolate the culprit below
            for doc_index in range(len(prepared)):
                if doc_index not in done:
                    yield [(doc_index, self._finish_alone(prepared, doc_index))]

    def _finish_alone(self, prepared: "PreparedTexts", doc_index: int) -> DocScore:
        try:
            return self.finish(prepared.only(doc_index))[0]
        except Exception as exc:  # noqa: BLE001 - recorded in the row, the caller goes on
            return DocScore(None, status=STATUS_ERROR, error=f"scoring failed: {type(exc).__name__}: {exc}"[:500])

    def window_losses(self, windows: list[list[int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(full, masked) per-token losses on the CPU for each window, in input order."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(windows)
        for batch in self._window_batches(windows):
            for index, full, masked in batch:
                out[index] = (full, masked)
        return out

    def _window_batches(self, windows: list[list[int]]) -> Iterator[list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """Batches of (window index, full, masked) per-token losses on the CPU, as the model runs them."""
        lengths = [len(w) for w in windows]
        # The fused pass doubles the rows after the first masked layer: plan half as many tokens
        # so its widest part holds `batch_tokens`, like each pass of the two-pass variant.
        budget = self.batch_tokens // 2 if self.fused and self.heads else self.batch_tokens
        pending = plan_batches(lengths, max(budget, self.max_seq_len))
        done = 0
        while pending:
            batch = pending.pop(0)
            try:
                with torch.inference_mode():
                    full, masked = self._run(windows, batch)
            except RuntimeError as exc:
                if not _is_out_of_memory(exc) or len(batch) == 1:
                    raise
                torch.cuda.empty_cache()
                self.stats["oom_splits"] += 1
                half = len(batch) // 2
                pending[:0] = [batch[:half], batch[half:]]
                continue
            rows = [(index, full[row, :lengths[index] - 1], masked[row, :lengths[index] - 1])
                    for row, index in enumerate(batch)]
            longest = max(lengths[i] for i in batch)
            self.stats["real_tokens"] += sum(lengths[i] for i in batch)
            self.stats["padded_tokens"] += longest * len(batch)
            done += len(batch)
            if self.on_batch:
                self.on_batch(done, len(windows))
            yield rows

    def _run(self, windows, batch):
        device = next(self.model.parameters()).device
        longest = max(len(windows[i]) for i in batch)
        ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, :len(windows[index])] = torch.tensor(windows[index])
        if device.type == "cuda":
            ids = ids.pin_memory().to(device, non_blocking=True)
        try:
            with sdpa_kernel(self._attention_kernels) if self._attention_kernels else nullcontext():
                full, masked = _batch_losses(self.model, ids, self.heads, self.fused, self.masking, self.gates,
                                             self.loss_kernel)
        except RuntimeError as exc:
            if self._attention_kernels and "no viable backend" in str(exc).lower():
                raise ValueError(f"attention_backends {', '.join(self.attention_backends)}: none of them can run "
                                 f"this batch on {device} (torch: {str(exc).splitlines()[0]})") from None
            raise
        return full.cpu(), masked.cpu()
