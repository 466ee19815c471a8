"""Benchmarks of jadecli: accuracy, speed, memory and recipe searches, each a module run from the
repository root as `python -m benchmarks.<name> --help`. They print what they measured, on what
data and with which command, beside a baseline measured in the same run."""
