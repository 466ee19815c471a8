"""The shipped examples stay valid: every YAML config resolves, every script parses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jadecli.config import TrainConfig, load_yaml_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_resolve(path):
    cfg = TrainConfig(**load_yaml_config(path))
    assert cfg.primary and cfg.n_labeled is not None


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.sh")), ids=lambda p: p.name)
def test_example_scripts_parse(path):
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
