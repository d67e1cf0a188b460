#!/usr/bin/env bash
# Train all four methods side by side on one lent GPU, resuming from runs/<method> when present,
# then copy the training state to $OUT (two files per method, each under 16 MiB).
# Usage (on the device machine, from the repo root): scripts/device_train.sh MINUTES TOTAL_STEPS
set -u
minutes=${1:-8}
steps=${2:-20000}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OMP_NUM_THREADS=4
nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv,noheader
python3 -c "import torch, PIL, safetensors, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
mkdir -p runs
for m in ssrno anysr moeisr clit; do
    python3 -m models.train --method "$m" --data data/train --resume --minutes "$minutes" \
        --steps "$steps" --save-every 2 --log-every 1000 > "runs/$m.log" 2>&1 &
done
wait
for m in ssrno anysr moeisr clit; do
    grep -v "^$m step" "runs/$m.log" | tail -n 4
    grep "^$m step" "runs/$m.log" | tail -n 2
    if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/$m" && cp "runs/$m/"*.safetensors "$OUT/$m/"; fi
done
nvidia-smi --query-gpu=memory.used --format=csv,noheader
