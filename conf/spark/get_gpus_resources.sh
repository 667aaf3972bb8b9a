#!/usr/bin/env bash
# GPU discovery script for Spark (spark.executor.resource.gpu.discoveryScript):
# prints the GPUs of this host as the ResourceInformation JSON Spark expects.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^ *//' | paste -sd, - | sed -e 's/\([0-9]\+\)/"\1"/g')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
