#!/usr/bin/env bash
# Train single, paired and JADE on the same data and print each run's primary test accuracy.
# Usage: examples/compare_models.sh [DATA_DIR] [more jade train flags]
#   DATA_DIR holds MNIST/ and USPS/ (default: $JADE_DATA_DIR, else ~/.cache/jadecli, as for
#   jade train); further flags go to every run, e.g. `--epochs 2 --device cpu` for a quick look.
# Exits non-zero as soon as any run fails, so it can gate a CI job.
set -euo pipefail
data_dir="${JADE_DATA_DIR:-$HOME/.cache/jadecli}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  data_dir="$1"
  shift
fi
for model in single paired jade; do
  jade train --primary usps --primary-size 20 --primary-pad 4 --auxiliary mnist \
    --data-dir "${data_dir}" --n-labeled 100 --model "${model}" --out "runs/compare-${model}" \
    --overwrite --no-progress "$@"
  grep -A1 'final_metrics:' "runs/compare-${model}/manifest.yaml"
done
