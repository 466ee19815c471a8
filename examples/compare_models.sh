#!/usr/bin/env bash
# Train single, paired and JADE on the same data and print each run's primary test accuracy.
# Usage: examples/compare_models.sh [DATA_DIR]   (the folder holding MNIST/ and USPS/;
#        default: $JADE_DATA_DIR, else ~/.cache/jadecli, as for jade train)
# Exits non-zero as soon as any run fails, so it can gate a CI job.
set -euo pipefail
data_dir="${1:-${JADE_DATA_DIR:-$HOME/.cache/jadecli}}"
for model in single paired jade; do
  jade train --primary usps --primary-size 20 --primary-pad 4 --auxiliary mnist \
    --data-dir "${data_dir}" --n-labeled 100 --model "${model}" --out "runs/compare-${model}" \
    --overwrite --no-progress
  grep -A1 'final_metrics:' "runs/compare-${model}/manifest.yaml"
done
