#!/usr/bin/env bash
# Time every tier of every shipped checkpoint side by side (one models.bench run), merge the
# latencies into the manifests and regenerate the results table in models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
"$py" -m models.bench --checkpoints --repeats "${REPEATS:-3}" --json runs/bench-checkpoints.json
for method in $("$py" -c "from models import registry; print(' '.join(registry.available()))"); do
    [ -f "models/checkpoints/$method.json" ] && "$py" -m models.export --method "$method" --bench runs/bench-checkpoints.json
done
"$py" -m models.report --write models/README.md
