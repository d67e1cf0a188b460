#!/usr/bin/env bash
# Time every tier of every shipped checkpoint side by side (one models.bench run), merge the
# latencies into the manifests and regenerate the results table in models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
json=${BENCH_JSON:-runs/bench-checkpoints.json}
# The command the shipped latencies come from (models/README.md): 2 threads, 6 rounds (a median
# of 2 moved with one slow timing), and the bare matmuls of the decoders' widths and of MoEISR's
# thin products for comparison.
"$py" -m models.bench --checkpoints --repeats "${REPEATS:-6}" --threads "${THREADS:-2}" \
    --gemm-widths 64,112,144,176,256 --gemm-shapes 4096x4x256,4096x256x3,4096x64x256 \
    --json "$json"
for method in $("$py" -c "from models import registry; print(' '.join(registry.available()))"); do
    [ -f "models/checkpoints/$method.json" ] && "$py" -m models.export --method "$method" --bench "$json"
done
"$py" -m models.report --write models/README.md
