"""Issue 5's recipe pieces: --preset paper, --arch shared, augmentation, loss scaling, and the
accuracy benchmark driving examples/reproduce_table1.sh end to end on tiny SVHN-format files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from jadecli.augment import Augment, augment, style_mix
from jadecli.cli import app
from jadecli.config import TrainConfig, load_yaml_config, resolve_train_config
from jadecli.data.core import Dataset, ImageSet
from jadecli.data.pair import prepare_pair
from jadecli.errors import UsageError
from tests.helpers import EXAMPLES, make_mnist, make_svhn, run_example, shell_env

BASE = {"primary": "svhn", "auxiliary": "mnist", "n_labeled": 1000}


# --------------------------------------------------------------------------- --preset paper


@pytest.mark.parametrize(
    ("model", "lr", "aux_ce", "primary_ce"),
    [("jade", 1e-3, 1e4, 1e5), ("paired", 1e-3, 10.0, 100.0), ("single", 1e-4, 10.0, 100.0)],
)
def test_paper_preset_is_reference_md_recipe(model, lr, aux_ce, primary_ce):
    cfg = resolve_train_config({**BASE, "model": model}, preset="paper")
    # reference.md, "Original hyper-parameters": batch 100, 300 epochs, Adam beta_1 0.1,
    # lr x1 / x0.3 / x0.1 over thirds, the model's CE weights; the paper's CNNs, dropout 0.5,
    # summed reconstruction (the "x784 / x3072" of a per-pixel mean), KL x1
    assert (cfg.batch_size, cfg.epochs, cfg.epoch_size) == (100, 300, "all")
    assert (cfg.adam_beta1, cfg.lr_schedule, cfg.lr) == (0.1, "step", lr)
    assert cfg.primary_ce_weight == primary_ce
    assert (cfg.arch, cfg.augment, cfg.dropout) == ("paper", "none", 0.5)
    assert (cfg.content_dim, cfg.hidden_dim, cfg.grad_clip, cfg.ema) == (10, 500, 0.0, 0.0)
    if model != "single":  # a single classifier has no auxiliary: its options stay unset
        assert cfg.aux_ce_weight == aux_ce
    if model == "jade":  # the VAE's options; the classifiers have none (they stay defaults)
        assert (cfg.recon_weight, cfg.kl_weight, cfg.match_weight) == (1.0, 1.0, 1.0)
        assert (cfg.loss_scale, cfg.style_dim) == ("sum", 10)
        # none of jadecli's levers: the classifier sees samples only, no separation term
        assert (cfg.ce_on_mean, cfg.separation_weight) == (False, 0.0)
        # decoders trained by the reconstruction alone, which also trains the content codes
        assert (cfg.swap_weight, cfg.decoder_content_grad) == (0.0, True)


def test_preset_sits_below_config_file_and_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nlr: 0.002\n")
    cfg = resolve_train_config({**BASE, "lr": 0.005}, path, preset="paper")
    assert (cfg.epochs, cfg.lr, cfg.adam_beta1) == (7, 0.005, 0.1)
    assert resolve_train_config(dict(BASE)).arch == "shared"  # no preset: the default recipe


def test_unknown_preset_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(
        app, ["train", "--primary", "svhn", "--n-labeled", "10", "--preset", "nips"]
    )
    assert result.exit_code == 2
    assert "--preset must be one of paper" in result.output
    assert "Traceback" not in result.output


def test_table1_example_is_the_paper_protocol():
    cfg = TrainConfig(**load_yaml_config(EXAMPLES / "svhn_mnist.yaml"))
    assert (cfg.primary, cfg.auxiliary, cfg.n_labeled) == ("svhn", "mnist", 1000)
    assert (cfg.labeled_selection, cfg.aux_per_class) == ("first", 4500)


def test_saved_configs_round_trip_and_unknown_keys_are_refused():
    cfg = TrainConfig(**BASE)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(UsageError, match="unknown config keys: warmup"):
        TrainConfig.from_dict({**cfg.to_dict(), "warmup": 5})


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--arch", "resnet", "--arch must be one of shared, paper, resnet18"),
        ("--augment", "some", "--augment must be one of none, primary, all"),
        ("--aug-shift", "0.9", "--aug-shift must be between 0 and 0.5"),
        ("--aug-rotate", "-5", "--aug-rotate must be between 0 and 180"),
        ("--loss-scale", "per-pixel", "--loss-scale must be one of mean, sum"),
        ("--val", "0.5%x", "--val must be a number of images (20) or a fraction"),
        ("--select", "best", "--select must be one of last, best-val"),
        ("--style-mix", "1.5", "--style-mix must be between 0 and 1"),
        ("--primary-pad", "-1", "--primary-pad must be between 0 and 64"),
    ],
)
def test_bad_recipe_flags_name_the_flag(runner, flag, value, message):
    args = ["train", "--primary", "svhn", "--auxiliary", "mnist", "--n-labeled", "10"]
    result = runner.invoke(app, [*args, flag, value])
    assert result.exit_code == 2, result.output
    assert message in result.output


# --------------------------------------------------------------------------- augmentation


def test_augment_is_seeded_bounded_and_changes_images():
    x = torch.rand(16, 3, 28, 28)
    torch.manual_seed(1)
    a = augment(x, Augment())
    torch.manual_seed(1)
    b = augment(x, Augment())
    assert torch.equal(a, b)  # the engine reseeds per epoch: resumed runs repeat draws
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert float((a - x).abs().mean()) > 0.05
    still = augment(x, Augment(0.0, 0.0, 0.0, 0.0))
    assert torch.allclose(still, x)  # nothing asked, nothing changed


def test_augment_grey_images_get_no_colour_jitter():
    x = torch.rand(8, 1, 16, 16)
    assert torch.allclose(augment(x, Augment(0.0, 0.0, 0.0, 0.5)), x)


def test_style_mix_draws_auxiliary_digits_on_primary_textures():
    torch.manual_seed(0)
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 8:24, 14:18] = 1.0  # a white bar on black: the "digit"
    primary = torch.rand(5, 3, 32, 32) * 0.5  # textures, all below 0.5
    assert torch.equal(style_mix(x, primary, 0.0), x)
    mixed = style_mix(x, primary, 1.0)
    background, stroke = mixed[:, :, :8], mixed[:, :, 8:24, 14:18]
    # |T - x|: the background is the primary's texture, the stroke its inverse (>= 0.5)
    assert float(background.max()) <= 0.5 and float(background.mean()) > 0.1
    assert float(stroke.min()) >= 0.5
    # every background pixel is a primary pixel (moved by the tile shuffle and flips)
    assert set(background.unique().tolist()) <= set(primary.unique().tolist())
    half = style_mix(x, primary, 0.5)
    changed = (half != x).flatten(1).any(1).float().mean()
    assert 0.25 < float(changed) < 0.75


def _dataset(c: int, size: int, name: str) -> Dataset:
    images = torch.zeros(10, c, size, size, dtype=torch.uint8)
    part = ImageSet(images, torch.arange(10) % 2)
    return Dataset(name, ["a", "b"], part, part, "/nowhere")


def test_prepare_pair_gives_one_trunk_one_input_shape():
    colour, grey = _dataset(3, 28, "p"), _dataset(1, 28, "a")
    p, a, mix = prepare_pair(colour, grey, "shared", None)
    assert p.image_shape == a.image_shape == (3, 28, 28) and mix == 0.5
    p, a, mix = prepare_pair(_dataset(1, 28, "p"), grey, "shared", None)
    assert p.image_shape == a.image_shape == (1, 28, 28) and mix == 0.0  # no style to mix in
    p, a, mix = prepare_pair(colour, grey, "paper", 0.0)
    assert (p.image_shape, a.image_shape, mix) == ((3, 28, 28), (1, 28, 28), 0.0)
    with pytest.raises(UsageError, match="--arch shared needs both datasets at one size"):
        prepare_pair(_dataset(3, 32, "p"), grey, "shared", None)
    with pytest.raises(UsageError, match=r"--style-mix 0\.5: the primary is grey"):
        prepare_pair(_dataset(1, 28, "p"), _dataset(3, 28, "a"), "shared", 0.5)


# --------------------------------------------------------------------------- arch shared


def _tiny_pair(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    make_mnist(data)
    make_svhn(data)
    return data


TINY_RUN = [
    *("--epochs", "1", "--epoch-size", "60", "--batch-size", "20"),
    *("--device", "cpu", "--no-progress"),
]


@pytest.mark.slow
def test_shared_arch_resizes_the_primary_and_analysis_follows(runner, tmp_path):
    data = _tiny_pair(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--primary", "svhn", "--auxiliary", "mnist", "--n-labeled", "20"]
    result = runner.invoke(app, [*args, "--data-dir", str(data), "--out", str(run), *TINY_RUN])
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    assert manifest["config"]["arch"] == "shared"
    assert manifest["config"]["primary_size"] == 28  # SVHN 32x32 -> MNIST's 28x28
    assert manifest["datasets"]["primary"]["image_shape"] == [3, 28, 28]
    assert manifest["config"]["style_mix"] == 0.5  # colour primary + grey auxiliary
    assert manifest["datasets"]["auxiliary"]["image_shape"] == [3, 28, 28]
    acc = manifest["final_metrics"]["primary_test_accuracy"]
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["primary"]["accuracy"] == pytest.approx(acc)  # evaluate repeats training


def test_paper_preset_trains_the_paper_cnns(runner, tmp_path):
    data = _tiny_pair(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--primary", "svhn", "--auxiliary", "mnist", "--n-labeled", "20"]
    args += ["--preset", "paper", "--data-dir", str(data), "--out", str(run), *TINY_RUN]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load((run / "manifest.yaml").read_text())
    assert manifest["config"]["arch"] == "paper" and manifest["config"]["primary_size"] is None
    assert manifest["datasets"]["primary"]["image_shape"] == [3, 32, 32]
    # the authors' recipe (no clipping, CE x1e4 / x1e5) ends with finite weights
    weights = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


# --------------------------------------------------------------------------- reproduce_table1.sh


@pytest.mark.slow
def test_reproduce_table1_runs_end_to_end_on_svhn_format_files(tmp_path):
    data = _tiny_pair(tmp_path)
    out = tmp_path / "table1"
    env = shell_env()
    # the protocol's 100 labeled per class and 4,500 MNIST per class shrink to fit tiny files
    small = ["--n-labeled", "20", "--aux-per-class", "10", *TINY_RUN]
    args = [str(data), str(out), "0,1", "--", *small]
    proc = run_example("reproduce_table1.sh", *args, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (out / "table1.md").read_text()
    for model in ("single", "paired", "jade"):
        assert f"| {model} | **" in table
        for seed in (0, 1):
            manifest = yaml.safe_load(
                (out / f"svhn1000-{model}-seed{seed}/manifest.yaml").read_text()
            )
            assert manifest["status"] == "completed"
            assert manifest["config"]["labeled_selection"] == "first"  # from svhn_mnist.yaml
            assert manifest["config"]["primary"] == "svhn"
            # all three models see SVHN at one resolution, its own (MNIST is padded to 32)
            assert manifest["datasets"]["primary"]["image_shape"] == [3, 32, 32], model
            acc = 100 * manifest["final_metrics"]["primary_test_accuracy"]
            assert f"s{seed}: {acc:.2f}" in table
    assert "jade - paired" in table and "jade train" in table


def test_reproduce_table1_without_data_dir_prints_usage():
    proc = run_example("reproduce_table1.sh")
    assert proc.returncode == 2 and "Usage" in proc.stderr
