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


def test_paper_example_is_the_2017_recipe():
    cfg = TrainConfig(**load_yaml_config(EXAMPLES / "paper_svhn_mnist.yaml"))
    assert (cfg.primary, cfg.auxiliary, cfg.n_labeled) == ("svhn", "mnist", 1000)
    assert (cfg.labeled_selection, cfg.aux_per_class, cfg.epoch_size) == ("first", 4500, "all")
    assert (cfg.adam_beta1, cfg.lr_schedule, cfg.epochs, cfg.dropout) == (0.1, "step", 300, 0.5)
    assert (cfg.aux_ce_weight, cfg.primary_ce_weight) == (1e4, 1e5)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.sh")), ids=lambda p: p.name)
def test_example_scripts_parse(path):
    assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0
