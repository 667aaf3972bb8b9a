"""The entry points as users call them: `python spark_jobs/<job>.py ...` (errors that stop before Spark starts)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import FIXTURE_MODEL, REPO
from tests.helpers import write_heads

JOBS = ["build_corpus", "detect_heads", "score", "select", "filter", "probe"]


def run_cli(job, *args):
    return subprocess.run([sys.executable, str(REPO / "spark_jobs" / f"{job}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("job", JOBS)
def test_help_lists_every_flag(job):
    result = run_cli(job, "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout
    from importlib import import_module
    for action in import_module(f"spark_jobs.{job}").build_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout


def test_model_path_that_does_not_exist(tmp_path):
    message = one_line_error(run_cli("detect_heads", "--model", tmp_path / "no-model", "--output", tmp_path / "o",
                                     "--heads-out", tmp_path / "h.json"))
    assert "does not exist" in message
    message = one_line_error(run_cli("score", "--model", tmp_path / "no-model", "--input", tmp_path / "i",
                                     "--output", tmp_path / "o", "--heads", write_heads(tmp_path / "h.json", [])))
    assert "does not exist" in message


def test_non_causal_model_is_named(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    message = one_line_error(run_cli("detect_heads", "--model", tmp_path / "bert", "--output", tmp_path / "o",
                                     "--heads-out", tmp_path / "h.json"))
    assert "'bert'" in message and "not a supported causal LM" in message


def test_heads_out_of_range(tmp_path):
    heads = write_heads(tmp_path / "h.json", [(999, 0)])
    message = one_line_error(run_cli("score", "--model", FIXTURE_MODEL, "--heads", heads,
                                     "--input", tmp_path / "i", "--output", tmp_path / "o"))
    assert "out of range" in message


def test_heads_file_missing_or_malformed(tmp_path):
    message = one_line_error(run_cli("score", "--model", FIXTURE_MODEL, "--heads", tmp_path / "none.json",
                                     "--input", tmp_path / "i", "--output", tmp_path / "o"))
    assert "heads file not found" in message
    (tmp_path / "bad.json").write_text("{not json")
    message = one_line_error(run_cli("score", "--model", FIXTURE_MODEL, "--heads", tmp_path / "bad.json",
                                     "--input", tmp_path / "i", "--output", tmp_path / "o"))
    assert "not a heads JSON" in message


@pytest.mark.parametrize("args", [["--dtype", "float64"], ["--top-fraction", "1.5"], ["--no-such-flag"],
                                  ["--slice-documents", "0"], ["--slice-minutes", "-1"], ["--watch-interval", "x"]])
def test_bad_flags(args):
    job = "detect_heads" if "--top-fraction" in args else "score"
    one_line_error(run_cli(job, *args))


def test_config_file_overrides_defaults_and_flags_override_it(tmp_path):
    from spark_jobs import select
    from spark_jobs.cli import JobError, parse_flags

    config = tmp_path / "select.yaml"
    config.write_text("fraction: 0.3\nmin_tokens: 10\n")
    args = parse_flags("select", select.build_parser(), ["--config", str(config), "--fraction", "0.4"])
    assert (args.fraction, args.min_tokens, args.by_domain) == (0.4, 10, True)
    config.write_text("fractoin: 0.3\n")
    with pytest.raises(JobError, match="fractoin"):
        parse_flags("select", select.build_parser(), ["--config", str(config)])


@pytest.mark.parametrize("job", JOBS + ["register_tables"])
def test_options_hold_every_flag_typed(job):
    """Each job's options: one field per flag, built from conf/<job>.yaml with text settings typed by the flag."""
    from dataclasses import FrozenInstanceError, fields
    from importlib import import_module

    module = import_module(f"spark_jobs.{job}")
    options = module.parse_options([])
    flags = {action.dest for action in module.build_parser()._actions} - {"help"}
    assert {field.name for field in fields(options)} == flags
    with pytest.raises(FrozenInstanceError):
        setattr(options, next(iter(flags)), None)


def test_options_from_settings_as_a_notebook_passes_them():
    from spark_jobs import detect_heads, select
    from spark_jobs.cli import JobError

    options = detect_heads.options(samples="2", top_fraction="0.5", model="m")
    assert (options.samples, options.top_fraction, options.model) == (2, 0.5, "m")
    with pytest.raises(JobError, match=r"^--heads-out is required$"):
        detect_heads.options(heads_out=None)
    with pytest.raises(JobError, match="unknown setting"):
        select.options(fractoin="0.3")


@pytest.mark.parametrize("job, args, message", [
    ("build_corpus", ["--min-chars", "9", "--max-chars", "3"], "--min-chars (9) is above --max-chars (3)"),
    ("register_tables", ["--tables", " , "], "--tables is empty"),
    ("register_tables", ["--tables", "a;b"], "not a valid table name"),
    ("select", ["--input", ""], "--input is required"),
    ("detect_heads", ["--heads-out", ""], "--heads-out is required"),
    ("score", ["--watch", "--mode", "overwrite", "--model", FIXTURE_MODEL, "--heads", str(REPO / "conf" / "score.yaml")],
     "use it with --mode incremental"),
    ("filter", ["--rejected", ""], "--rejected is required"),
    ("probe", ["--probes", ""], "--probes is required"),
    ("probe", ["--fraction", "2"], "--fraction"),
])
def test_option_errors_stop_before_spark_starts(job, args, message):
    """One line on stderr and nothing else: no Spark session was started for a run that cannot go on."""
    assert message in one_line_error(run_cli(job, *args))


def test_the_default_model_is_the_real_one_and_its_absence_says_how_to_get_it(tmp_path):
    """conf/*.yaml default to SmolLM2 (`make model`), not the fixture; a missing copy is one line that
    says how to make it. A relative local path is made absolute for the executors."""
    import os

    from attention_influence.loading import ModelLoadError, load_config
    from spark_jobs import detect_heads, probe, score

    from spark_jobs.cli import Job, ModelFlags

    for module in (score, detect_heads, probe):  # the model flags are declared once, in spark_jobs/cli.py
        assert module.parse_options.__func__ is Job.parse and issubclass(module.JOB.options_type, ModelFlags)
    assert score.options(input="a/b", output="c/d", heads="h").model.endswith("models/smollm2-135m-instruct")
    with pytest.raises(ModelLoadError, match=r"model path does not exist: .*smollm2-135m-instruct "
                                             r"\(`make model` makes it"):
        load_config(str(tmp_path / "models" / "smollm2-135m-instruct"))
    here = os.getcwd()
    try:
        os.chdir(tmp_path)
        (tmp_path / "my-model").mkdir()
        (tmp_path / "heads.json").write_text("{}")
        options = score.options(input="a/b", output="c/d", model="my-model", heads="heads.json")
        assert (options.model, options.heads) == (str(tmp_path / "my-model"), str(tmp_path / "heads.json"))
        assert score.options(input="a/b", output="c/d", model="org/hub-model", heads="h").model == "org/hub-model"
    finally:
        os.chdir(here)


def test_a_model_path_an_executor_cannot_read_names_the_path_and_the_working_directory(tmp_path):
    import os

    from attention_influence.loading import ModelLoadError
    from udfs import influence

    missing = str(tmp_path / "only-on-the-driver" / "model")
    settings = influence.ScoringSettings(model=missing, heads=((0, 0),), max_seq_len=16, dtype="float32",
                                         text_col="text", carry_cols=("id",))
    with pytest.raises(ModelLoadError) as raised:
        influence._load_on_executor(settings, "cpu")
    message = str(raised.value)
    assert "\n" not in message and "huggingface" not in message.lower()
    assert f"model path {missing} is not readable on executor" in message
    assert f"(working directory {os.getcwd()})" in message
