#!/usr/bin/env bash
# The README's quickstart: offline, on the built-in pair, a few minutes (about 3 to 8 on 2 CPU cores).
set -euo pipefail
jade train --primary synth-street --auxiliary synth-hand --n-labeled 1000 --epochs 5 \
  --out runs/quickstart "$@"
