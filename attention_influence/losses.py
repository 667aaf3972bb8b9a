"""Per-token losses of the full and the head-masked model (SPEC §3).

Tokens -> windows -> token-budget batches -> per-token losses -> documents.

* A document is `tokenizer(text)["input_ids"]` (special tokens included), cut
  into consecutive, non-overlapping windows of `max_seq_len`; in each window
  every token but the first is predicted. Document losses are token-weighted
  means over all predicted tokens.
* Windows are sorted by length and packed into batches of at most
  `batch_tokens` padded tokens, right-padded. Under causal attention a real
  token never sees a pad to its right, so padding cannot change a result; the
  pads' outputs are dropped.
* The fused pass runs the layers below the first masked layer once, then
  continues full and masked copies of the batch side by side (2x rows); the
  two-pass variant runs the model twice. Both give the same losses.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_influence.compiling import compile_layers
from attention_influence.masking import DEFAULT_MASKING, Head, HeadGates, checked_heads, decoder_layers

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


class _FanOut:
    """Forward pre-hooks that turn a batch of B rows into [full; masked] 2B rows at layer `start`
    while `start` is set (the fused pass), and pass everything through otherwise.

    Installed once per model (`fan_out`), never per batch. Every decoder layer from `start` on
    receives per-row tensors (position embeddings, masks) computed for B rows; those are tiled to
    2B. Only tensors of 2+ dimensions whose first dimension is B are tiled, which is what per-row
    inputs look like in every supported family. The hooks run outside the layers' forward, so a
    compiled layer sees plain tensors of B or 2B rows.
    """

    def __init__(self, model):
        self.start: int | None = None
        self.rows = 0
        for index, layer in enumerate(decoder_layers(model)):
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def _tile(self, value):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == self.rows:
            return torch.cat([value, value], dim=0)
        if isinstance(value, tuple):
            return tuple(self._tile(v) for v in value)
        return value

    def _hook(self, index: int):
        def hook(_module, args, kwargs):
            if self.start is None or index < self.start:
                return None
            if index == self.start:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.rows = hidden.shape[0]
            args = tuple(self._tile(a) for a in args)
            kwargs = {k: self._tile(v) for k, v in kwargs.items()}
            return args, kwargs
        return hook

    @contextmanager
    def from_layer(self, start: int):
        self.start = start
        try:
            yield
        finally:
            self.start = None


FAN_OUT = "_attention_influence_fan_out"


def fan_out(model) -> _FanOut:
    """The model's `_FanOut`, installed on first use."""
    if not isinstance(getattr(model, FAN_OUT, None), _FanOut):
        object.__setattr__(model, FAN_OUT, _FanOut(model))
    return getattr(model, FAN_OUT)


# How the LM head + cross-entropy runs (`Scorer(loss_kernel=...)`): "auto" is what measured fastest
# per device kind (vocabulary blocks on a CPU, row slices elsewhere; docs/benchmarks.md); the others
# are there so benchmarks/gpu.sh can compare them on a GPU and a user can pick one.
LOSS_KERNELS = ("auto", "row_slices", "vocab_blocks", "linear_cross_entropy")


def checked_loss_kernel(model, kernel: str) -> str:
    """`kernel`, or a clear error where this model's LM head cannot run it."""
    if kernel not in LOSS_KERNELS:
        raise ValueError(f"loss_kernel must be one of {', '.join(LOSS_KERNELS)}, got {kernel!r}")
    head = model.get_output_embeddings()
    if kernel in ("vocab_blocks", "linear_cross_entropy") and not isinstance(head, torch.nn.Linear):
        raise ValueError(f"loss_kernel {kernel!r} needs an nn.Linear LM head, this model has "
                         f"{type(head).__name__}; use 'auto' or 'row_slices'")
    if kernel == "linear_cross_entropy":
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError("loss_kernel 'linear_cross_entropy' cannot apply the model's final logit "
                             "softcapping; use 'auto', 'row_slices' or 'vocab_blocks'")
        if not hasattr(F, "linear_cross_entropy"):
            raise ValueError(f"loss_kernel 'linear_cross_entropy' needs torch >= 2.15 (this is {torch.__version__})")
    return kernel


def _token_losses(model, hidden: torch.Tensor, targets: torch.Tensor, max_logits: int = 1 << 25,
                  kernel: str = "auto") -> torch.Tensor:
    """Cross-entropy of each next token in float32 (rows, length), by `kernel` (LOSS_KERNELS; checked
    by the caller): "auto" takes the vocabulary in blocks on a CPU, elsewhere a slice of rows at a
    time (what has been measured on a GPU, docs/benchmarks.md)."""
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    if kernel == "auto":
        kernel = "vocab_blocks" if hidden.device.type == "cpu" and isinstance(head, torch.nn.Linear) else "row_slices"
    if kernel == "vocab_blocks":
        return _vocab_blocked_losses(head, softcap, hidden, targets, max_logits)
    if kernel == "linear_cross_entropy":
        return _builtin_linear_losses(head, hidden, targets)
    return _row_sliced_losses(head, softcap, hidden, targets, max_logits)


def _builtin_linear_losses(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torch's fused `F.linear_cross_entropy` in its chunked form, which never builds the whole
    [tokens, vocab] logits. Its result has the inputs' dtype: on bfloat16 the per-token losses are
    rounded to bfloat16 (about 3 significant digits); document means stay within ~1e-4 of float32."""
    rows, length, width = hidden.shape
    options = torch.nn.LinearCrossEntropyOptions(acc_policy="accurate")
    losses = F.linear_cross_entropy(hidden.reshape(-1, width), head.weight, targets.reshape(-1),
                                    linear_bias=head.bias, reduction="none", options=options)
    return losses.float().view(rows, length)


ATTENTION_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                      "math": "MATH"}


def checked_attention_backends(model, names: Sequence[str] | None) -> list | None:
    """torch's SDPBackend values for `names` (ATTENTION_BACKENDS), or a clear error. Whether a kernel
    can run is known only per batch (device, dtype, head size): where none of them can, the scorer
    stops with an error naming the setting (e.g. cuDNN on a CPU)."""
    if not names:
        return None
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in ATTENTION_BACKENDS]
    if unknown:
        raise ValueError(f"attention_backends: unknown {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(ATTENTION_BACKENDS)}")
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != "sdpa":
        raise ValueError(f"attention_backends choose SDPA kernels, but this model runs {implementation!r} attention "
                         "(load it with attn_implementation='sdpa')")
    return [getattr(SDPBackend, ATTENTION_BACKENDS[n]) for n in names]


def _softcapped(logits: torch.Tensor, softcap) -> torch.Tensor:
    """Gemma 2's final logit softcapping, where the config asks for it; both loss paths apply it."""
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _row_sliced_losses(head, softcap, hidden: torch.Tensor, targets: torch.Tensor, max_logits: int) -> torch.Tensor:
    """Cross-entropy with the whole vocabulary's logits for a slice of rows at a time."""
    rows, length, _ = hidden.shape
    vocab = head.weight.shape[0]
    step = max(1, max_logits // max(1, length * vocab))
    losses = []
    for start in range(0, rows, step):
        logits = _softcapped(head(hidden[start:start + step]).float(), softcap)
        part = targets[start:start + step]
        losses.append(F.cross_entropy(logits.reshape(-1, vocab), part.reshape(-1), reduction="none").view(part.shape))
    return torch.cat(losses)


def vocab_block_size(hidden_size: int, vocab: int) -> int:
    """Vocabulary rows per block: about 4 MiB of float32 weight, which stays in a CPU's cache, in a
    multiple of 256 rows (matrix multiplies of an odd width ran 1.5x slower on SmolLM2's head)."""
    return min(vocab, max(256, (1 << 20) // max(1, hidden_size) // 256 * 256))


def _vocab_blocked_losses(head: torch.nn.Linear, softcap, hidden: torch.Tensor, targets: torch.Tensor,
                          max_logits: int, block: int | None = None) -> torch.Tensor:
    """Cross-entropy with the vocabulary in blocks and a running log-sum-exp.

    The LM head's weight (SmolLM2: 49,152 x 576, 113 MB) does not fit in a CPU's cache, so one
    [tokens, vocab] product streams it from memory for every slice of tokens, and the logits then make
    two more trips through memory (log-softmax, gather). A block of the vocabulary is reused by every
    token while it is in cache, and its logits are reduced at once: about 1.5x faster on SmolLM2's
    head (docs/benchmarks.md, run 6). Same float32 values as `F.cross_entropy` to ~1e-6.
    """
    rows, length, width = hidden.shape
    vocab = head.weight.shape[0]
    flat_hidden, flat_targets = hidden.reshape(-1, width), targets.reshape(-1)
    if flat_targets.numel() and (int(flat_targets.min()) < 0 or int(flat_targets.max()) >= vocab):
        raise IndexError(f"target token id out of range for a vocabulary of {vocab}")
    block = block or vocab_block_size(width, vocab)  # `block`: a GPU benchmark tries larger ones
    token_step = max(1, max_logits // block)
    losses = []
    for token_start in range(0, flat_hidden.shape[0], token_step):
        part = flat_hidden[token_start:token_start + token_step]
        part_targets = flat_targets[token_start:token_start + token_step]
        running_max = torch.full((part.shape[0],), -math.inf, dtype=torch.float32, device=part.device)
        sum_exp = torch.zeros_like(running_max)
        target_logit = torch.zeros_like(running_max)
        for start in range(0, vocab, block):
            bias = head.bias[start:start + block] if head.bias is not None else None
            logits = _softcapped(F.linear(part, head.weight[start:start + block], bias).float(), softcap)
            local = part_targets - start
            picked = logits.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
            target_logit = torch.where((local >= 0) & (local < logits.shape[1]), picked, target_logit)
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            sum_exp = sum_exp * torch.exp(running_max - new_max) + logits.sub_(new_max[:, None]).exp_().sum(dim=1)
            running_max = new_max
        losses.append(running_max + torch.log(sum_exp) - target_logit)
    return torch.cat(losses).view(rows, length)


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


def _fused_hidden(model, input_ids: torch.Tensor, heads: list[Head], masking: str,
                  gates: HeadGates | None = None) -> torch.Tensor:
    """Last hidden states of the fused pass, (2 x rows, length-1): the full rows, then the masked ones.

    The layers below the first masked one run on the B rows once with open gates; from there on the
    rows are [full; masked] and the masked layers' gates are closed over the second half only."""
    gates = gates or HeadGates(model, heads, masking)
    rows = input_ids.shape[0]
    masked_rows = torch.arange(2 * rows, device=input_ids.device) >= rows
    with fan_out(model).from_layer(min(layer for layer, _ in heads)), gates.closed(masked_rows):
        return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]


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
        rest of the batches run. Batches are planned over all windows, as in `finish`."""
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
            if seconds is not None and ready and time.perf_counter() - last >= seconds:
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
