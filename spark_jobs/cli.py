"""A job's edge: its flags (declared once, on its options dataclass), its configuration files, its exit codes.

One configuration path: built-in defaults in `conf/<job>.yaml`, then the file given with `--config`, then
flags. A job declares each option once, as a field of a frozen dataclass made with `flag(...)`; the parser
is generated from those fields, so flags and options cannot drift apart. Every job runs its main through
`run`, the one place exit codes (and the one-line reasons beside them) come from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

import yaml

from attention_influence.errors import first_line
from spark_jobs import run_log

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"


class JobError(Exception):
    """A user error: reported as one line on stderr, exit code 2."""


class Stopped(Exception):
    """A run stopped on request after committing what it had: one line on stderr and exit code 75."""


class CommitConflict(Exception):
    """Concurrent writers kept winning: one line on stderr and exit code 3, so that a rerun completes."""


USER_ERROR_EXIT = 2
COMMIT_CONFLICT_EXIT = 3
STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped on request (SIGTERM, Ctrl-C), what was committed is consistent; rerun


def is_path(ref: str) -> bool:
    """SPEC §1: a table argument with '/' is a Delta path, otherwise a catalog name."""
    return "/" in ref


# ---------------------------------------------------------------- flags, declared once

def flag(help: str = "", *, type: Callable | None = None, choices: Any = None, required: bool = False,
         switch: bool = False, once: bool = False, off: str | None = None, local_path: bool = False) -> Any:
    """A job option: a dataclass field (its default comes from conf/<job>.yaml) and its `--flag`.

    `switch`: `--x/--no-x`; `once`: `--x` alone sets it; `off`: the name of the flag that sets it false
    (`--by-domain/--global`); `choices` may be a function, called when the parser is built (the core's
    lists, whose modules import torch); `local_path`: an existing relative path is made absolute (executors
    and a Connect server's workers run elsewhere, where it would fall through to a hub lookup).
    """
    return field(metadata={"help": help, "type": type, "choices": choices, "required": required,
                           "switch": switch, "once": once, "off": off, "local_path": local_path})


def _add_flag(parser: argparse.ArgumentParser, option) -> None:
    meta = option.metadata
    name = "--" + option.name.replace("_", "-")
    if meta["off"]:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(name, dest=option.name, action="store_true", help=meta["help"])
        group.add_argument(meta["off"], dest=option.name, action="store_false", help=f"the opposite of {name}")
        return
    if meta["switch"] or meta["once"]:
        action = argparse.BooleanOptionalAction if meta["switch"] else "store_true"
        parser.add_argument(name, action=action, help=meta["help"])
        return
    choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
    parser.add_argument(name, type=meta["type"], choices=choices, help=meta["help"])


def job_parser(options_type: type, description: str) -> argparse.ArgumentParser:
    """The parser of a job's flags, one per field of `options_type` (in declaration order)."""
    parser = _Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for option in fields(options_type):
        _add_flag(parser, option)
    return parser


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (argparse would print the usage first)
        self.exit(USER_ERROR_EXIT, f"error: {message} (see --help)\n")


Options = TypeVar("Options")


@dataclass(frozen=True)
class Job(Generic[Options]):
    """A job's name (its conf/<name>.yaml), its options type and its --help line."""

    name: str
    options_type: type
    description: str
    check: Callable | None = None  # options -> options: checks across flags, normalised values (JobError)

    def parser(self) -> argparse.ArgumentParser:
        """The job's flags, one per field of its options (without --config and --verbose, which every job has)."""
        return job_parser(self.options_type, self.description)

    def parse(self, argv: list[str] | None = None, settings: dict | None = None) -> Options:
        """Options from flags over `--config` over `settings` over conf/<job>.yaml (the edge of the job)."""
        namespace = parse_flags(self.name, self.parser(), argv, settings)
        options = options_from(self.options_type, namespace)
        return self.check(options) if self.check else options

    def options(self, **settings) -> Options:
        """Options for a notebook or a test: conf/<job>.yaml's defaults with `settings` over them."""
        return self.parse([], settings)


def parse_flags(job: str, parser: argparse.ArgumentParser, argv: list[str] | None = None,
                settings: dict | None = None) -> argparse.Namespace:
    """Flags over `--config FILE` over `settings` over `conf/<job>.yaml`; unknown keys are an error.

    `settings` is how a notebook passes its widgets: checked and converted like a config file's.
    """
    parser.add_argument("--config", help="YAML file of job settings (flag names with _), overriding conf/%s.yaml" % job)
    parser.add_argument("--verbose", action="store_true",
                        help="also print per-task and per-worker lines (on a cluster they are in the executor logs)")
    defaults = read_yaml(CONF / f"{job}.yaml")
    defaults.update({key.replace("-", "_"): value for key, value in (settings or {}).items()})
    # Only --config is read first (no --help here), so --help shows the defaults the file gives.
    config_only = argparse.ArgumentParser(add_help=False)
    config_only.add_argument("--config")
    pre, _ = config_only.parse_known_args(argv)
    if pre.config:
        defaults.update(read_yaml(Path(pre.config)))
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise JobError(f"unknown setting(s) in configuration: {', '.join(unknown)}")
    parser.set_defaults(**_checked_settings(parser, defaults))
    namespace = parser.parse_args(argv)
    _FLAG_NAMES.update(action.dest for action in parser._actions if action.option_strings and "_" in action.dest)
    run_log.set_verbose(bool(namespace.verbose))
    return namespace


def options_from(options_type: type[Options], namespace: argparse.Namespace) -> Options:
    """A job's frozen options from its parsed flags; a missing required one is a JobError naming the flag."""
    given = {key: value for key, value in vars(namespace).items() if key not in ("config", "verbose")}
    for option in fields(options_type):
        value = given[option.name]
        if option.metadata.get("required") and value in (None, ""):
            raise JobError(f"--{option.name.replace('_', '-')} is required")
        if option.metadata.get("local_path") and isinstance(value, str) and value and not os.path.isabs(value) \
                and "://" not in value and os.path.exists(value):
            given[option.name] = os.path.abspath(value)
    return options_type(**given)


def shared_fields(options, options_type: type) -> dict:
    """The fields `options` shares with `options_type` (a job handing its scorer's flags to another's)."""
    return {option.name: getattr(options, option.name) for option in fields(options_type)}


MAX_CONFIG_BYTES = 1 << 20  # job settings and Spark profiles are a few lines; anything bigger is a mistake


def read_small_text(path: Path, what: str) -> str:
    """A small UTF-8 text file, or a one-line JobError (missing, a directory, too big, not text)."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise JobError(f"{what} {path} is {size} bytes, more than the {MAX_CONFIG_BYTES} allowed")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"{what} not found: {path}") from None
    except UnicodeDecodeError:
        raise JobError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise JobError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_yaml(path: Path) -> dict:
    """A job's settings file: a mapping of flag names (with _ or -) to single values."""
    text = read_small_text(path, "configuration file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise JobError(f"configuration file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise JobError(f"configuration file {path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise JobError(f"configuration file {path} must hold a mapping of settings")
    if not all(isinstance(key, str) for key in data):
        raise JobError(f"configuration file {path} has a setting whose name is not text")
    return {key.replace("-", "_"): value for key, value in data.items()}


def _checked_settings(parser: argparse.ArgumentParser, settings: dict) -> dict:
    """Settings from files, shaped like flags: one value each, of the flag's kind.

    argparse converts string defaults with the flag's `type` (a bad one ends in its one-line
    error); everything else is checked here, so a list or a mapping in the wrong place is
    refused before it reaches the job.
    """
    actions = {action.dest: action for action in parser._actions}
    checked = {}
    for key, value in settings.items():
        action = actions[key]
        if value is None:
            checked[key] = None
            continue
        boolean = action.nargs == 0  # store_true / BooleanOptionalAction
        if boolean != isinstance(value, bool) or isinstance(value, (list, dict)):
            kind = "true or false" if boolean else "a single value"
            raise JobError(f"setting {key} must be {kind}, got {type(value).__name__} {str(value)[:60]!r}")
        if not boolean:
            value = str(value)
            if action.choices is not None and value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise JobError(f"setting {key} must be one of {choices}, got {value[:60]!r}")
        checked[key] = value
    return checked


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ---------------------------------------------------------------- flags every model-loading job shares

DTYPE_CHOICES = ("auto", "float32", "bfloat16")


def masking_modes():
    from attention_influence.masking import MASKING_MODES

    return MASKING_MODES


@dataclass(frozen=True, kw_only=True)
class ModelFlags:
    """The model a job loads: detect_heads.py, score.py and probe.py declare it here, once."""

    model: str = flag("local model directory, .gguf file or hub id (the strong model)", required=True,
                      local_path=True)
    revision: str | None = flag("model revision on the hub")
    dtype: str = flag("auto: bfloat16 on GPUs, float32 on CPUs", choices=DTYPE_CHOICES)
    trust_remote_code: bool = flag("allow a model that needs its own Python code (runs that code on every executor)",
                                   switch=True)
    allow_pickle_weights: bool = flag("allow pickle weights (pytorch_model.bin), which can run code when loaded",
                                      switch=True)


@dataclass(frozen=True, kw_only=True)
class ScorerFlags(ModelFlags):
    """What makes a scorer besides the model: score.py's and probe.py's (probe scores as score.py does)."""

    heads: str = flag("heads JSON written by detect_heads.py", required=True, local_path=True)
    masking: str = flag("uniform: masked heads attend equally to the tokens they see (the paper); "
                        "zero-output: their output is zeroed", choices=masking_modes)
    max_seq_len: int | None = flag("window length; default the model's context length", type=positive_int)
    batch_tokens: int | None = flag("padded tokens per forward pass; default 16384 on GPU clusters, 1024 on CPUs",
                                    type=positive_int)


# ---------------------------------------------------------------- running a job

# Flags (with an underscore in their name) parsed in this process: the core names its parameters
# (`trust_remote_code`); a user of a job knows them as flags (`--trust-remote-code`).
_FLAG_NAMES: set[str] = set()


def in_flag_words(message: str) -> str:
    if not _FLAG_NAMES:
        return message
    names = "|".join(sorted(map(re.escape, _FLAG_NAMES), key=len, reverse=True))
    return re.sub(r"\b(" + names + r")\b", lambda m: "--" + m.group(1).replace("_", "-"), message)


def task_failure_line(exc: BaseException, what: str = "task",
                      consequence: str = "the job was aborted; nothing was written") -> str | None:
    """One line for a job Spark aborted after a task failed `spark.task.maxFailures` times, with what the
    job's own writes mean for a rerun (`consequence`); None for any other failure."""
    match = re.search(r"Task (\d+) in stage ([\d.]+) failed (\d+) times?, most recent failure: (.*)", str(exc))
    if not match:
        return None
    cause = re.sub(r"^Lost task \S+ in stage \S+ \([^)]*\) \([^)]*\): ", "", match.group(4).strip())
    return (f"{what} for partition {match.group(1)} (stage {match.group(2)}) failed {match.group(3)} times; "
            f"{consequence}: {cause[:300]}")


# Functions that word a failure a user can act on (exception -> one line, or None), registered by the modules
# that know them (local_catalog.py: the local catalog held by another process); `run` ends such a job with exit 2.
FAILURE_LINES: list[Callable[[BaseException], str | None]] = []


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
        task_failure: Callable[[BaseException], str | None] = task_failure_line) -> int:
    """Run a job's main, the one place exit codes come from: user errors one line on stderr and 2,
    a commit lost to concurrent writers 3, a task that failed every retry 1 (`task_failure` words it for
    the job), a stop on request 75 (each one line)."""
    from attention_influence.loading import ModelLoadError

    try:
        try:
            return main(argv) or 0
        except CommitConflict as exc:
            run_log.error(str(exc))
            return COMMIT_CONFLICT_EXIT
        except Stopped as exc:
            run_log.say(f"stopped: {exc}")
            return STOPPED_EXIT
        except Exception as exc:  # noqa: BLE001 - anything else goes on to the handlers below
            line = task_failure(exc)
            if line is None:
                raise
            run_log.error(line)
            return 1
    except JobError as exc:
        run_log.error(first_line(exc))
        return USER_ERROR_EXIT
    except (ModelLoadError, ValueError) as exc:
        run_log.error(in_flag_words(first_line(exc)))
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        run_log.error("interrupted")
        return 130
    except Exception as exc:  # Spark's analysis errors for missing tables/columns are user errors too
        name = type(exc).__name__
        if name in {"AnalysisException", "IllegalArgumentException", "ParseException"}:
            run_log.error(first_line(exc))
            return USER_ERROR_EXIT
        for known in FAILURE_LINES:
            line = known(exc)
            if line:
                run_log.error(line)
                return USER_ERROR_EXIT
        traceback.print_exc()
        return 1


def dumps(value) -> str:
    """Canonical JSON (sorted keys, no spaces): what fingerprints and recorded configurations hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
