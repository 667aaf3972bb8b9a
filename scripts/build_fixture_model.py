#!/usr/bin/env python
"""Build the tiny Llama fixture (tokenizer + model + RECIPE.md) used by tests and demos.

    PYTHONPATH=. python scripts/build_fixture_model.py --output fixtures/tiny-llama --seed 0

Recipe fields of demo.fixture.FixtureRecipe can be overridden with
`--set name=value` (repeatable), e.g. `--set steps=500`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.fixture import FixtureRecipe, build_fixture  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="fixtures/tiny-llama", help="directory to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a recipe field")
    args = parser.parse_args(argv)

    types = {f.name: type(f.default) for f in dataclasses.fields(FixtureRecipe)}
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in types:
            parser.error(f"unknown recipe field {name!r}; known: {', '.join(types)}")
        overrides[name] = types[name](value)

    checks = build_fixture(args.output, seed=args.seed, log=lambda m: print(m, flush=True), **overrides)
    print(json.dumps(checks, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
