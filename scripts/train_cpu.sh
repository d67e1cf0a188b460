#!/usr/bin/env bash
# The CPU training chain (no GPU needed; resumable: re-run it to continue where it stopped).
#   1. one shared trunk: SSRNO at full width only, i.e. plain SRNO (EDSR-baseline + Galerkin decoder);
#   2. each method starts from that trunk's matching tensors and trains its own knob, in two
#      lanes of one thread each (better use of 2 cores than one lane of 2 threads for small ops).
# Usage: scripts/train_cpu.sh [TRUNK_STEPS] [METHOD_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
trunk_steps=${1:-1500}
method_steps=${2:-600}
py=${PYTHON:-.venv/bin/python}
common=(--data data/train --save-every 5 --log-every 100 --resume)
[ -d data/train ] || "$py" -m models.pack ../shared/datasets/train/t91 ../shared/datasets/train/bsd200 --out data/train
"$py" -m models.train --method ssrno --richest-only --out runs/srno --steps "$trunk_steps" --threads 2 "${common[@]}"
lane() {
    for method in "$@"; do
        "$py" -m models.train --method "$method" --init runs/srno/model.safetensors --out "runs/$method" \
            --steps "$method_steps" --threads 1 "${common[@]}" >> "runs/$method.log" 2>&1
    done
}
lane ssrno moeisr &
lane anysr clit &
wait
