"""Looking inside a trained run: `evaluate`, `inspect-latents` and `reconstruct`.

Each command starts from a run folder: `common.open_run` reads its manifest and checkpoint,
rebuilds the model and the datasets it was trained on, and each module then does its one job,
writes its files under `RUN/analysis/` (or `--out`) and appends a record to the manifest.
"""
