#!/usr/bin/env bash
# Ship one trained method: export the run as the fp16 checkpoint + manifest, then measure the
# shipped file's quality on the benchmark sets and merge it into the manifest.
# Set5, Set14 and B100 are evaluated whole (LIMIT=N: B100's first N images only, a quicker
# screen; the manifest records the count per tier as eval_images). A B100 already measured in
# pieces (models.evaluate --limit / --skip) can be joined with models.combine_evals instead.
# Latency is merged later, for all methods in one models.bench run (scripts/ship_bench.sh), so
# that timings are comparable.
# Usage: scripts/ship.sh METHOD [RUN_DIR]   (RUN_DIR defaults to runs/METHOD; env: LIMIT THREADS=1 BENCH_DIR=../shared/datasets/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
method=$1
run=${2:-runs/$method}
py=${PYTHON:-.venv/bin/python}
bench=${BENCH_DIR:-../shared/datasets/bench}
limit=${LIMIT:+--limit $LIMIT}
threads=${THREADS:-1}
mkdir -p runs/eval
"$py" -m models.export --method "$method" --run "$run"
"$py" -m models.evaluate --method "$method" --data "$bench/set5" "$bench/set14" --threads "$threads" \
    --json "runs/eval/$method-set5-set14.json"
# shellcheck disable=SC2086  # $limit is empty or two words
"$py" -m models.evaluate --method "$method" --data "$bench/b100" $limit \
    --threads "$threads" --json "runs/eval/$method-b100.json"
"$py" -m models.export --method "$method" --eval "runs/eval/$method-set5-set14.json" "runs/eval/$method-b100.json"
