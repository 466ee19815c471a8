#!/usr/bin/env bash
# Table 1 of the JADE paper on its protocol: single, paired and JADE on SVHN (first 100 per class
# labeled) + MNIST (first 4,500 per class), several seeds, one markdown table of test accuracy
# (mean ± std over seeds, per-seed values, margins, wall time, commands). Runs jadecli's default
# recipe; put `-- --preset paper` at the end for the 2017 hyper-parameters (days on a CPU).
# Usage: examples/reproduce_table1.sh DATA_DIR [OUT_DIR] [SEEDS] [-- more jade train flags]
#   DATA_DIR holds SVHN/{train,test}_32x32.mat and MNIST/raw/*; OUT_DIR (default runs/table1)
#   gets one run folder per model and seed and table1.md; SEEDS default to 0,1,2.
# Exits non-zero if any run fails.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 1 || "$1" == "--" ]]; then
  sed -n '2,10p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
data_dir="$1"
out="runs/table1"
seeds="0,1,2"
shift
if [[ $# -gt 0 && "$1" != "--" ]]; then out="$1"; shift; fi
if [[ $# -gt 0 && "$1" != "--" ]]; then seeds="$1"; shift; fi
if [[ $# -gt 0 && "$1" == "--" ]]; then shift; fi
# the benchmarks are a package of the repository: import them from its root, run from here
PYTHONPATH="${here}/..${PYTHONPATH:+:${PYTHONPATH}}" python -m benchmarks.accuracy \
  --pairs "" --pair "svhn1000=--config '${here}/svhn_mnist.yaml'" \
  --models single,paired,jade --seeds "${seeds}" --data-dir "${data_dir}" \
  --runs "${out}" --out "${out}/table1.md" \
  --title "JADE Table 1 protocol: SVHN 1,000 labeled + MNIST 4,500 per class" \
  -- "$@"
