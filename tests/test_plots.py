"""The figures: each writes a real, non-blank PNG atomically, and rejects mismatched inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jadecli import plots


def check_png(path: Path, min_side: int = 100) -> tuple[int, int]:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 1_000_000
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        pixels = np.asarray(img.convert("L"), dtype=float)
    assert w > min_side and h > min_side
    assert pixels.std() > 5.0  # something was drawn
    assert not list(path.parent.glob("*.tmp")), "temporary file left behind"
    return w, h


def test_confusion(tmp_path: Path) -> None:
    m = np.array([[8, 1, 1], [0, 9, 1], [2, 0, 8]])
    plots.plot_confusion(tmp_path / "cm.png", m, ["a", "b", "c"], "test split")
    check_png(tmp_path / "cm.png")
    # more than 30 classes: no per-cell counts, but still a figure; an all-zero row is fine
    big = np.diag(np.arange(35))
    plots.plot_confusion(tmp_path / "big.png", big, [f"c{i}" for i in range(35)], "big")
    check_png(tmp_path / "big.png")
    with pytest.raises(ValueError):
        plots.plot_confusion(tmp_path / "bad.png", m, ["a", "b"], "bad")


def latent_inputs(groups: list[str], k: int = 4) -> dict:
    d = len(groups)
    rng = np.random.default_rng(0)
    within = rng.uniform(0.0, 1.2, size=(k, d))
    within[:, 1] = np.nan  # an inactive dim
    activity = rng.uniform(0.01, 2.0, size=d)
    activity[1] = 0.0
    return dict(
        within=within,
        random_groups=rng.uniform(0.9, 1.1, size=d),
        activity=activity,
        dim_names=[f"{g}_{i}" for i, g in enumerate(groups)],
        groups=groups,
        classes=[str(c) for c in range(k)],
        title="latents",
        normalisation="Each value is the within-group variance divided by the overall variance.",
        active_threshold=0.01,
    )


@pytest.mark.parametrize("groups", [["content"] * 4 + ["style"] * 3, ["feature"] * 5])
def test_latent_variance(tmp_path: Path, groups: list[str]) -> None:
    plots.plot_latent_variance(tmp_path / "lv.png", **latent_inputs(groups))
    check_png(tmp_path / "lv.png")


def test_latent_variance_rejects_mismatch(tmp_path: Path) -> None:
    args = latent_inputs(["content"] * 3 + ["style"] * 2)
    with pytest.raises(ValueError):
        plots.plot_latent_variance(tmp_path / "x.png", **{**args, "activity": np.ones(4)})
    with pytest.raises(ValueError):
        plots.plot_latent_variance(tmp_path / "x.png", **{**args, "classes": ["a"]})
    with pytest.raises(ValueError):
        plots.plot_latent_variance(tmp_path / "x.png", **{**args, "groups": ["content"] * 4})
    with pytest.raises(ValueError):
        plots.plot_latent_variance(tmp_path / "x.png", **{**args, "groups": ["other"] * 5})


def test_probe(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [
        {"factor": "digit", "metric": "accuracy", "content": 0.95, "style": 0.3, "chance": 0.1},
        {"factor": "rotation", "metric": "r2", "content": 0.1, "style": 0.8, "chance": None},
        {"factor": "thickness", "metric": "r2", "content": -3.0, "style": None, "chance": 0.0},
    ]
    plots.plot_probe(tmp_path / "probe.png", rows, "probes")
    check_png(tmp_path / "probe.png")
    with pytest.raises(ValueError):
        plots.plot_probe(tmp_path / "x.png", [{**rows[0], "metric": "f1"}], "bad")
    with pytest.raises(ValueError):
        plots.plot_probe(tmp_path / "x.png", [], "empty")


def grid(rows: int, cols: int, rgb: bool = True) -> np.ndarray:
    rng = np.random.default_rng(rows * 10 + cols)
    shape = (rows, cols, 16, 16, 3) if rgb else (rows, cols, 16, 16)
    return rng.uniform(size=shape)


def test_image_grid(tmp_path: Path) -> None:
    small, tall = tmp_path / "small.png", tmp_path / "tall.png"
    plots.save_image_grid(small, grid(2, 5), "recon", ["input", "output"], list("abcde"))
    plots.save_image_grid(tall, grid(6, 5), "recon", [f"r{i}" for i in range(6)], list("abcde"))
    _, h_small = check_png(small)
    _, h_tall = check_png(tall)
    assert h_tall > h_small


def test_image_grid_gray_and_blank(tmp_path: Path) -> None:
    blank = np.zeros((4, 4), dtype=bool)
    blank[0, 0] = True  # the corner of a swap grid
    out = tmp_path / "swap.png"
    plots.save_image_grid(out, grid(4, 4, rgb=False), "swap", blank=blank, scale=3)
    check_png(out)
    # no labels at all
    plots.save_image_grid(tmp_path / "plain.png", grid(3, 3, rgb=False), "plain")
    check_png(tmp_path / "plain.png")


def test_image_grid_rejects_mismatch(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    with pytest.raises(ValueError):
        plots.save_image_grid(out, grid(2, 3), "t", row_labels=["a"])
    with pytest.raises(ValueError):
        plots.save_image_grid(out, grid(2, 3), "t", col_labels=["a", "b"])
    with pytest.raises(ValueError):
        plots.save_image_grid(out, grid(2, 3), "t", blank=np.zeros((3, 2), dtype=bool))
    with pytest.raises(ValueError):
        plots.save_image_grid(out, np.zeros((2, 3, 8)), "t")
    assert not out.exists()
