#!/usr/bin/env bash
# The training chain on one lent GPU (see scripts/train_cpu.sh for the same chain on a CPU).
#   scripts/device_train.sh trunk   MINUTES STEPS   # shared SRNO trunk (SSRNO at full width)
#   scripts/device_train.sh methods MINUTES STEPS   # the four methods side by side, from the trunk
# Every run resumes from runs/<name> when present; at the end the state is copied to $OUT
# (two files per run, each under 16 MiB) so the next call, or this machine, can continue.
set -u
phase=${1:?trunk or methods}
minutes=${2:-8}
steps=${3:-20000}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader
python3 -c "import torch, PIL, safetensors, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p runs
common=(--data data/train --resume --minutes "$minutes" --steps "$steps" --save-every 2 --log-every 1000)
if [ "$phase" = trunk ]; then
    names=(srno)
    python3 -m models.train --method ssrno --richest-only --out runs/srno "${common[@]}" > runs/srno.log 2>&1
else
    names=(ssrno anysr moeisr clit)
    for m in "${names[@]}"; do
        python3 -m models.train --method "$m" --init runs/srno/model.safetensors --out "runs/$m" \
            "${common[@]}" > "runs/$m.log" 2>&1 &
    done
    wait
fi
for m in "${names[@]}"; do
    tail -n 3 "runs/$m.log"
    if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/$m" && cp "runs/$m/"*.safetensors "$OUT/$m/"; fi
done
