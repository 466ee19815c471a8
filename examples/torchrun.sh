#!/usr/bin/env bash
# The quickstart's run trained by several processes under torchrun: gloo on CPUs, or one GPU per
# process (cuda:LOCAL_RANK) on a machine with CUDA. Rank 0 writes runs/torchrun.
#   bash examples/torchrun.sh                       # 2 processes
#   NPROC=4 bash examples/torchrun.sh --epochs 2    # more flags go to jade train
set -euo pipefail
torchrun --standalone --nproc-per-node "${NPROC:-2}" -m jadecli train \
  --primary synth-street --auxiliary synth-hand --n-labeled 1000 --epochs 5 \
  --out runs/torchrun "$@"
