"""Untrusted models and input (issue 8 §3): remote code, pickle weights, SQL identifiers from
flags, malformed or huge configuration files. Each ends with one line and exit code 2, never a
traceback, and a refused model is refused before Spark starts (no JVM, no code of the model run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from spark_jobs import score
from spark_jobs.cli import JobError
from spark_jobs.tables import check_table_name
from spark_jobs.local_profile import read_properties
from tests.conftest import FIXTURE_MODEL, REPO
from tests.helpers import run_job, write_docs, write_heads

MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def run_score_cli(*args, env=None):
    return subprocess.run([sys.executable, str(REPO / "spark_jobs" / "score.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, env=env)


def one_line_error(result, code=2):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def run_in_process(args, capsys):
    """run_job, with argparse's own exit (one line, code 2) counted like the job's."""
    try:
        return run_job(score, args, capsys)
    except SystemExit as exc:
        return exc.code, capsys.readouterr()


def copy_model_without_weights(target):
    target.mkdir()
    for name in MODEL_FILES:
        shutil.copy(os.path.join(FIXTURE_MODEL, name), target / name)
    return target


class _Planted:
    """Unpickling this runs code (writes a file): what a hostile pytorch_model.bin can do."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def score_args(tmp_path, model):
    return ["--input", tmp_path / "docs", "--output", tmp_path / "scored", "--model", model,
            "--heads", write_heads(tmp_path / "heads.json", [(1, 0)])]


# ---------------------------------------------------------------- model code and weights

def test_pickle_weights_refused_before_spark_starts(tmp_path):
    """A checkpoint with only pytorch_model.bin: exit 2, one line, and the pickle is never opened."""
    import pickle

    model = copy_model_without_weights(tmp_path / "pickled")
    sentinel = tmp_path / "unpickled-ran-code"
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(sentinel)))
    result = run_score_cli(*score_args(tmp_path, model))
    message = one_line_error(result)
    assert "pickle weights" in message and "--allow-pickle-weights" in message
    assert not sentinel.exists()
    assert "SparkContext" not in result.stderr and "ivy" not in result.stderr.lower()  # no JVM was started


def test_pickle_weights_load_only_when_allowed(tmp_path):
    """The same checkpoint saved with torch.save loads with allow_pickle_weights and matches the
    safetensors original (a plain transformers forward of both)."""
    import torch
    from transformers import AutoModelForCausalLM

    from attention_influence.loading import ModelLoadError, load_model

    original = AutoModelForCausalLM.from_pretrained(FIXTURE_MODEL, dtype=torch.float32).eval()
    model_dir = copy_model_without_weights(tmp_path / "pickled")
    torch.save(original.state_dict(), model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle_weights"):
        load_model(str(model_dir))
    loaded, tokenizer = load_model(str(model_dir), allow_pickle_weights=True)
    ids = tokenizer("Permission is hereby granted, free of charge.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits)


def test_model_that_needs_remote_code_is_refused(tmp_path):
    """config.json names its own Python classes (auto_map) for an architecture transformers does
    not know: refused without --trust-remote-code, and that Python file is never imported."""
    model = copy_model_without_weights(tmp_path / "custom")
    shutil.copy(os.path.join(FIXTURE_MODEL, "model.safetensors"), model / "model.safetensors")
    sentinel = tmp_path / "remote-code-ran"
    (model / "configuration_custom.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n"
                                                   "from transformers import PretrainedConfig\n"
                                                   "class CustomConfig(PretrainedConfig):\n"
                                                   "    model_type = 'custom-llm'\n")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="custom-llm", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (model / "config.json").write_text(json.dumps(config))
    message = one_line_error(run_score_cli(*score_args(tmp_path, model)))
    assert "--trust-remote-code" in message
    assert not sentinel.exists()


def test_auto_map_on_a_known_architecture_is_not_remote_code(tmp_path):
    """A leftover auto_map on a Llama config loads with transformers' own classes."""
    from attention_influence.loading import check_untrusted_model

    model = copy_model_without_weights(tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors").write_bytes(b"")
    check_untrusted_model(str(model))  # no error


# ---------------------------------------------------------------- SQL identifiers from flags

@pytest.mark.parametrize("name", ["db.t; DROP TABLE db.x", "db.t x", "db.`t", "t`; SELECT 1 --", "a.b.c.d",
                                  "db.t)", ""])
def test_table_names_that_could_break_out_are_refused(name):
    with pytest.raises(JobError, match="not a valid table name"):
        check_table_name(name)


@pytest.mark.parametrize("name", ["db.t", "t", "spark_catalog.db.t_1", "db.`we; ird`", "`a``b`.c"])
def test_table_names_plain_or_quoted_are_accepted(name):
    assert check_table_name(name) == name


@pytest.mark.slow
def test_flags_with_backtick_semicolon_space(spark, tmp_path, capsys):
    """Names from flags never reach SQL text unquoted: a table name that could break out is refused
    before Spark reads anything; a column name is only ever looked up (or refused), one line each."""
    docs = write_docs(spark, [("a", "prose", "Open a file and return a stream.")], tmp_path / "docs",
                      ddl="`doc``id` STRING, domain STRING, text STRING")
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    common = ["--input", docs, "--model", FIXTURE_MODEL, "--heads", heads, "--max-seq-len", 32]

    for output in ("default.scored; DROP TABLE default.x", "default.`scored", "default scored"):
        code, captured = run_job(score, common + ["--output", output, "--id-col", "doc`id"], capsys)
        assert code == 2 and "not a valid table name" in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1
    code, captured = run_job(score, common + ["--output", tmp_path / "o", "--id-col", "id; DROP TABLE x"], capsys)
    assert code == 2 and "no column(s) id; DROP TABLE x" in captured.err
    code, captured = run_job(score, common + ["--output", tmp_path / "o", "--id-col", "doc`id"], capsys)
    assert code == 2 and "backtick" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- malformed, huge, wrong-shape files

BAD_YAML = {
    "not-yaml.yaml": "input: [unclosed\n",
    "a-list.yaml": "- input\n- output\n",
    "list-value.yaml": "partitions: [1, 2]\n",
    "mapping-value.yaml": "model: {name: x}\n",
    "bad-choice.yaml": "mode: sometimes\n",
    "bad-bool.yaml": "token_losses: maybe\n",
    "bad-int.yaml": "batch_tokens: -5\n",
    "unknown.yaml": "inptu: x\n",
    "huge.yaml": "input: x\n" + "# padding\n" * 200_000,
    "nested.yaml": "input: " + "[" * 100_000 + "]" * 100_000 + "\n",
}

BAD_HEADS = {
    "not-json.json": "{heads: [[0, 1]",
    "no-heads.json": '{"model": "x"}',
    "heads-string.json": '{"heads": "0.1"}',
    "heads-triples.json": '{"heads": [[0, 1, 2]]}',
    "heads-null.json": '{"heads": null}',
    "a-list.json": "[[0, 1]]",
    "overflow.json": '{"heads": [[1e999, 0]]}',
    "nested.json": '{"heads": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "huge.json": '{"heads": [[0, 0]], "pad": "' + "x" * (17 << 20) + '"}',
    "binary.json": b"\xff\xfe\x00\x01",
}


@pytest.mark.parametrize("name", sorted(BAD_YAML))
def test_malformed_job_config(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_text(BAD_YAML[name])
    code, captured = run_in_process(["--config", path] + score_args(tmp_path, FIXTURE_MODEL), capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    assert "table not found" not in lines[0]  # refused for the file, before any table is read


@pytest.mark.parametrize("name", sorted(BAD_HEADS))
def test_malformed_heads_json(tmp_path, capsys, name):
    path = tmp_path / name
    content = BAD_HEADS[name]
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["--input", tmp_path / "docs", "--output", tmp_path / "o", "--model", FIXTURE_MODEL, "--heads", path]
    code, captured = run_in_process(args, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "heads file" in lines[0] and "Traceback" not in captured.err, captured.err


@pytest.mark.parametrize("content", ["spark.master local[1]\njust-a-key\n", b"\xff\xfe spark.master x\n",
                                     "spark.x y\n" * 200_000])
def test_malformed_properties_file(tmp_path, content):
    path = tmp_path / "bad.conf"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(JobError):
        read_properties(path)
    with pytest.raises(JobError, match="not found"):
        read_properties(tmp_path / "missing.conf")


def test_malformed_files_exit_path(tmp_path):
    """As users run it: a bad YAML, heads JSON and Spark profile each end with one line, exit 2."""
    heads = write_heads(tmp_path / "heads.json", [(1, 0)])
    (tmp_path / "bad.yaml").write_text("partitions: {a: 1}\n")
    (tmp_path / "bad.json").write_text('{"heads": [[0, "x"]]}')
    (tmp_path / "bad.conf").write_text("spark.master\n")
    base = ["--input", tmp_path / "docs", "--output", tmp_path / "o", "--model", FIXTURE_MODEL]
    assert "setting partitions" in one_line_error(run_score_cli(*base, "--heads", heads, "--config",
                                                                tmp_path / "bad.yaml"))
    assert "heads file" in one_line_error(run_score_cli(*base, "--heads", tmp_path / "bad.json"))
    env = dict(os.environ, ATTENTION_INFLUENCE_SPARK_CONF=str(tmp_path / "bad.conf"))
    assert "line 1" in one_line_error(run_score_cli(*base, "--heads", heads, env=env))
