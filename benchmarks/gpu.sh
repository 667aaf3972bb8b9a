#!/usr/bin/env bash
# The GPU benchmark in one command (at most 8 minutes): bash benchmarks/gpu.sh [--out DIR] [--smoke] [...]
# Writes DIR/results.json, DIR/results.txt (key=value) and DIR/log.txt; default DIR bench-output/gpu.
# --smoke: tiny shapes on whatever device there is (the test suite runs it on the CPU).
# Python: $PY, else the project's .venv, else python3 (on a bare GPU machine: the image's python3 with torch,
# transformers and, for the Spark step, pyspark + Java; see docs/benchmarks.md "Running the GPU benchmark").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
out=bench-output/gpu
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[i]}" = "--out" ] && out=${args[i + 1]}
done
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# 8 minutes at most: the script stops starting steps at --budget-s (450 s); this is the hard stop.
timeout --kill-after=10 480 "$PY" benchmarks/gpu_bench.py --out "$out" "$@" 2>&1 | tee "$out/log.txt"
