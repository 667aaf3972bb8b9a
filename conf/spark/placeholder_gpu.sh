#!/usr/bin/env bash
# Placeholder GPU discovery script for the local standalone cluster (scripts/cluster.sh):
# prints one GPU whose address is $ATTENTION_INFLUENCE_PLACEHOLDER_GPU (worker 1: "0", worker 2: "1"),
# in the ResourceInformation JSON Spark expects. Spark schedules it like a real GPU; the scorer
# uses CUDA only when the address names a real device, otherwise it falls back to the CPU.
# On a real GPU host use conf/spark/get_gpus_resources.sh instead.
set -euo pipefail
address="${ATTENTION_INFLUENCE_PLACEHOLDER_GPU:-0}"
[[ "$address" =~ ^[0-9]+$ ]] || { echo "bad ATTENTION_INFLUENCE_PLACEHOLDER_GPU: $address" >&2; exit 1; }
echo "{\"name\": \"gpu\", \"addresses\": [\"$address\"]}"
