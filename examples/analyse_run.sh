#!/usr/bin/env bash
# Look inside a finished JADE run, and fail (exit 3) when its primary accuracy is below a gate.
#   bash examples/analyse_run.sh runs/quickstart            # gate: MIN_ACCURACY=60%
#   MIN_ACCURACY=0.9 bash examples/analyse_run.sh runs/usps-jade
set -euo pipefail
RUN=${1:-runs/quickstart}

# Accuracy, per-class accuracy, confusion matrices, test ELBO; exit 3 below the gate.
jade evaluate "$RUN" --min-accuracy "${MIN_ACCURACY:-60%}"

# The same numbers as JSON on stdout, for scripts (messages go to stderr).
accuracy=$(jade evaluate "$RUN" --format json | python -c \
  'import json, sys; print(json.load(sys.stdin)["primary"]["accuracy"])')
echo "primary accuracy: $accuracy"

# Figure 2 of the paper, measured: within-class variance per latent, the disentanglement ratio.
jade inspect-latents "$RUN" --dataset both

# Reconstructions, style/content swaps within and across datasets, latent traversals.
jade reconstruct "$RUN" --traverse all
