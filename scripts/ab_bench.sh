#!/usr/bin/env bash
# Time a change against a base commit: models.bench in separate processes, base and change
# alternating round by round, then the paired ratios (models.compare_benches). In one process
# a change to how threads run BLAS also slows the other side (models/README), so A/Bs of such
# changes go through here.
# Usage: scripts/ab_bench.sh BASE_REF [ROUNDS] [models.bench args, e.g. --methods ssrno --scales 2]
# AB_KEEP=DIR keeps each round's bench JSON (base-N.json, change-N.json) there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[[ "$py" = /* ]] || py="$PWD/$py"  # the base worktree runs it too (not resolved: a venv's python is a link)
base_ref=$1
shift
rounds=3
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then  # ROUNDS is optional: bench args may follow BASE_REF
    rounds=$1
    shift
fi
work=$(mktemp -d)
git worktree add --quiet --detach "$work/base" "$base_ref"
trap 'git worktree remove --force "$work/base"; rm -rf "$work"' EXIT
bench() {  # side, round, directory
    (cd "$3" && "$py" -m models.bench --checkpoints "${args[@]}" --json "$work/$1-$2.json" > /dev/null)
}
args=("$@")
# Base first in odd rounds, the change first in even ones: whichever ran second read up to
# about a tenth faster, tiers the change doesn't touch included (3 rounds, base always first).
for round in $(seq "$rounds"); do
    if (( round % 2 )); then
        bench base "$round" "$work/base"; bench change "$round" .
    else
        bench change "$round" .; bench base "$round" "$work/base"
    fi
done
if [[ -n "${AB_KEEP:-}" ]]; then  # kept first: the runs outlive a comparison that fails
    mkdir -p "$AB_KEEP" && cp "$work"/base-*.json "$work"/change-*.json "$AB_KEEP"/
fi
"$py" -m models.compare_benches --base "$work"/base-*.json --change "$work"/change-*.json
