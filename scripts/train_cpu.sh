#!/usr/bin/env bash
# The CPU training chain (no GPU needed; resumable: re-run it to continue where it stopped).
#   1. one shared trunk: SSRNO at full width only, i.e. plain SRNO (EDSR-baseline + Galerkin decoder);
#   2. each method starts from that trunk's matching tensors and trains its own knob.
# Usage: scripts/train_cpu.sh [TRUNK_STEPS] [METHOD_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
trunk_steps=${1:-1500}
method_steps=${2:-600}
py=${PYTHON:-.venv/bin/python}
common=(--data data/train --threads "${THREADS:-2}" --save-every 5 --log-every 100 --resume)
[ -d data/train ] || "$py" -m models.pack ../shared/datasets/train/t91 ../shared/datasets/train/bsd200 --out data/train
"$py" -m models.train --method ssrno --richest-only --out runs/srno --steps "$trunk_steps" "${common[@]}"
for method in ssrno anysr moeisr clit; do
    "$py" -m models.train --method "$method" --init runs/srno/model.safetensors --out "runs/$method" \
        --steps "$method_steps" "${common[@]}"
done
