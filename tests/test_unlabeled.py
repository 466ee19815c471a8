"""`--unlabeled`: the sources a user names, what the run records and trains on, and bad input
(an empty folder, files that do not decode, a grey image among colour ones, other sizes)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from jadecli.cli import app
from jadecli.config import TrainConfig
from jadecli.config.data_options import primary_overlap
from jadecli.data import unlabeled as unl
from jadecli.data.memory import MemoryBudget
from jadecli.data.preprocess import ImageRecipe
from jadecli.objective import Objective
from jadecli.trainer import model_spec
from tests.helpers import tiny_synth_args
from tests.test_bad_input import assert_clean_error


def write_images(folder: Path, n: int, size: int = 28, mode: str = "RGB", seed: int = 0) -> None:
    """n images in nested sub-folders (names that are not classes)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        d = folder / f"part{i % 3}" / "deeper"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, size=(size, size, 3)).astype(np.uint8)
        Image.fromarray(arr).convert(mode).save(d / f"{i}.png")


def columns(run: Path) -> list[str]:
    with open(run / "metrics.csv", newline="") as fh:
        return next(csv.reader(fh))


def manifest(run: Path) -> dict:
    return yaml.safe_load((run / "manifest.yaml").read_text())


def test_sources_parse_to_one_canonical_list():
    cfg = TrainConfig(
        primary="mnist", auxiliary="usps", n_labeled=100, unlabeled=["rest", " folder:x ", "rest"]
    )
    assert cfg.unlabeled == "rest,folder:x"
    assert TrainConfig(primary="mnist", auxiliary="usps", n_labeled=100).unlabeled == ""


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--confidence", "0.9"], ["--confidence 0.9", "no --unlabeled"]),
        (["--unlabeled-ratio", "2"], ["--unlabeled-ratio 2", "no --unlabeled"]),
        (
            ["--unlabeled", "rest", "--consistency-weight", "0", "--no-unlabeled-elbo"],
            ["--unlabeled", "nothing learns"],
        ),
        (["--unlabeled", "folder:"], ["--unlabeled", "needs a path"]),
    ],
)
def test_options_that_would_do_nothing_are_refused(runner, synth_dir, tmp_path, extra, needles):
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=tuple(extra)))
    assert_clean_error(result, 2, *needles)
    assert not out.exists()


def test_the_primary_own_images_are_refused_as_unlabeled(runner, synth_dir, tmp_path):
    """The primary itself, or a folder inside or around the primary's folder, would train on
    its labeled, --val (and test) images as unlabeled ones: one error naming --unlabeled rest."""
    out = tmp_path / "run"
    primary = tiny_synth_args(synth_dir, out, extra=("--unlabeled", "synth-street"))
    assert "synth-street" in primary  # the tiny run's primary
    assert_clean_error(runner.invoke(app, primary), 2, "--unlabeled synth-street", "rest")
    assert not out.exists()
    home = tmp_path / "scans"
    for source, overlaps in (
        (f"folder:{home}", True),  # the primary's folder itself
        (str(home / "train" / "0"), True),  # inside it
        (str(tmp_path), True),  # around it: its test images too
        (str(tmp_path / "other"), False),  # beside it
        ("rest", False),
    ):
        why = primary_overlap(f"folder:{home}", source)
        assert (why is not None) == overlaps, source
    assert primary_overlap("mnist", "usps,rest") is None


def test_jade_learns_from_the_rest_of_the_primary(runner, synth_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, tiny_synth_args(synth_dir, out, extra=("--unlabeled", "rest", "--val", "10"))
    )
    assert result.exit_code == 0, result.output
    m = manifest(out)
    primary = m["datasets"]["primary"]
    record = primary["unlabeled"]
    # rest = every training image outside the 50 labeled (40 trained on + 10 --val)
    assert record["images"] == primary["train_size"] - 50
    (source,) = record["sources"]
    assert source["kind"] == "rest" and not source["streamed"]
    assert len(source["files_sha256"]) == 64
    cols = columns(out)
    for term in ("recon_unlabeled", "kl_style_unlabeled", "kl_match_unlabeled", "consistency"):
        assert term in cols
    with open(out / "metrics.csv", newline="") as fh:
        share = [float(r["confident_unlabeled"]) for r in csv.DictReader(fh)]
    assert len(share) == 2 and all(0 <= v <= 1 for v in share)
    assert m["status"] == "completed"
    # scoring the images it trained on without labels says so
    scored = runner.invoke(
        app, ["evaluate", str(out), "--split", "train-unlabeled", "--device", "cpu"]
    )
    assert scored.exit_code == 0, scored.output
    assert "not a held-out score" in scored.output
    held_out = runner.invoke(app, ["evaluate", str(out), "--split", "val", "--device", "cpu"])
    assert held_out.exit_code == 0 and "not a held-out" not in held_out.output


@pytest.mark.parametrize("model", ["single", "paired"])
def test_classifiers_learn_by_consistency_alone(runner, synth_dir, tmp_path, model):
    out = tmp_path / "run"
    result = runner.invoke(
        app, tiny_synth_args(synth_dir, out, model, ("--unlabeled", "synth-hand"))
    )
    assert result.exit_code == 0, result.output
    cols = columns(out)
    assert "consistency" in cols and "recon_unlabeled" not in cols
    record = manifest(out)["datasets"]["primary"]["unlabeled"]
    assert record["sources"][0]["kind"] == "dataset"


def test_without_unlabeled_the_run_has_no_unlabeled_terms(trained_runs):
    for model, run in trained_runs.items():
        cols = columns(run)
        assert "consistency" not in cols and "recon_unlabeled" not in cols, model
        assert "unlabeled" not in manifest(run)["datasets"]["primary"]


def test_a_folder_with_bad_files_grey_images_and_other_sizes(runner, synth_dir, tmp_path):
    folder = tmp_path / "unlabeled"
    write_images(folder, 12)
    write_images(folder / "big", 3, size=40, seed=1)  # resized, with a warning
    write_images(folder / "grey", 2, mode="L", seed=2)  # grey among colour: 3 channels
    (folder / "broken.png").write_bytes(b"not a png at all")  # skipped, with a warning
    (folder / "notes.txt").write_text("ignored: not an image file")
    out = tmp_path / "run"
    result = runner.invoke(app, tiny_synth_args(synth_dir, out, extra=("--unlabeled", str(folder))))
    assert result.exit_code == 0, result.output
    assert "skipped 1 file(s) that do not decode" in result.output
    assert "broken.png" in result.output
    assert "resizing 3 image(s) of other sizes" in result.output
    (source,) = manifest(out)["datasets"]["primary"]["unlabeled"]["sources"]
    assert source["kind"] == "folder" and source["images"] == 17 and source["skipped_files"] == 1


@pytest.mark.parametrize("content", ["empty", "all-broken", "missing"])
def test_a_folder_without_usable_images_is_one_error(runner, synth_dir, tmp_path, content):
    folder = tmp_path / "unlabeled"
    if content != "missing":
        (folder / "sub").mkdir(parents=True)
    if content == "all-broken":
        for i in range(3):
            (folder / "sub" / f"{i}.jpg").write_bytes(b"\x00" * 10)
    out = tmp_path / "run"
    result = runner.invoke(
        app, tiny_synth_args(synth_dir, out, extra=("--unlabeled", f"folder:{folder}"))
    )
    needle = {"empty": "holds no image files", "all-broken": "none of the 3", "missing": "no such"}
    assert_clean_error(result, 1, "--unlabeled", needle[content])
    assert not (out / "manifest.yaml").exists() or manifest(out)["status"] != "completed"


def test_rest_with_every_image_labeled_is_an_error(runner, synth_dir, tmp_path):
    args = tiny_synth_args(synth_dir, tmp_path / "run", extra=("--unlabeled", "rest"))
    args[args.index("--n-labeled") + 1] = "all"
    assert_clean_error(runner.invoke(app, args), 1, "--unlabeled rest", "every primary")


def recipe(shape=(3, 20, 20)) -> ImageRecipe:
    return ImageRecipe("folder:x", 3, shape[1:], 0, shape[0], True)


def test_a_folder_beyond_the_memory_budget_is_streamed(tmp_path, monkeypatch):
    folder = tmp_path / "big"
    write_images(folder, 30, size=20)
    # a file whose header reads but whose pixels do not: found only when streamed
    good = (folder / "part0" / "deeper" / "0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    budget = MemoryBudget(limit=20 * 3 * 20 * 20, source="test")  # room for 20 of 31 images
    warnings: list[str] = []
    images = unl.load_unlabeled(
        [f"folder:{folder}"], None, torch.empty(0), recipe(), tmp_path, budget, warnings.append
    )
    assert images.streamed and len(images) == 31 and images.resident.shape[0] == 0
    assert budget.used == 0  # nothing was claimed: the images stay on disk
    stream = unl.UnlabeledStream(images, seed=0, workers=2)
    order = stream.order(0, 62)  # two passes
    assert sorted(order[:31].tolist()) == list(range(31))
    steps = list(order.split(8))
    batches = list(stream.epoch(0, steps))
    assert len(batches) == len(steps)
    assert all(b.dtype == torch.uint8 and b.shape[1:] == (3, 20, 20) for b in batches)
    assert stream.failed == 2  # the truncated file, once per pass
    assert sum(len(b) for b in batches) == 62 - 2
    # the same epoch draws the same images again (a resumed run repeats them)
    again = list(unl.UnlabeledStream(images, seed=0, workers=0).epoch(0, steps))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_a_folder_that_fits_is_decoded_into_memory(tmp_path):
    folder = tmp_path / "small"
    write_images(folder, 5, size=20)
    budget = MemoryBudget(limit=1e9, source="test")
    images = unl.load_unlabeled(
        [str(folder)], None, torch.empty(0), recipe(), tmp_path, budget, lambda m: None
    )
    assert not images.streamed and images.resident.shape == (5, 3, 20, 20)
    assert budget.used == 5 * 3 * 20 * 20


def test_unlabeled_terms_exist_only_with_unlabeled_images():
    cfg = TrainConfig(primary="mnist", auxiliary="usps", n_labeled=100)
    spec = model_spec(cfg, _FakeData())
    assert not any("unlabeled" in t or t == "consistency" for t in Objective(cfg, spec).terms)
    with_u = TrainConfig(primary="mnist", auxiliary="usps", n_labeled=100, unlabeled="rest")
    assert "consistency" in Objective(with_u, spec).terms
    assert "recon_unlabeled" in Objective(with_u, spec).terms
    no_elbo = TrainConfig(
        primary="mnist", auxiliary="usps", n_labeled=100, unlabeled="rest", unlabeled_elbo=False
    )
    labeled = Objective(cfg, spec).terms
    assert Objective(no_elbo, spec).terms == (*labeled, "consistency", "confident_unlabeled")


class _Shape:
    def __init__(self) -> None:
        self.image_shape, self.num_classes = (1, 28, 28), 10


class _FakeData:
    primary = auxiliary = _Shape()
