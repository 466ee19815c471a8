"""Tests for the built-in synthetic datasets in jadecli.data.synthetic."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from jadecli.data import synthetic
from jadecli.data.synthetic import SYNTH_VERSION, SynthSplit, generate_hand, generate_street

GENERATORS: dict[str, Callable[[int, int], SynthSplit]] = {
    "street": generate_street,
    "hand": generate_hand,
}
SHAPES = {"street": (3, 32, 32), "hand": (1, 28, 28)}
REQUIRED_FACTORS = {
    "street": {"font", "fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b", "rotation", "scale"}
    | {"shift_x", "shift_y", "blur", "noise", "left", "right"},
    "hand": {"variant", "thickness", "slant", "aspect", "size", "distortion", "rotation"},
}
NAMES = list(GENERATORS)


@functools.cache
def split(name: str, n: int, seed: int) -> SynthSplit:
    # generated once per session: several tests look at the same split
    return GENERATORS[name](n, seed)


def test_version_is_int() -> None:
    assert isinstance(SYNTH_VERSION, int) and SYNTH_VERSION >= 1


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_ranges(name: str) -> None:
    s = split(name, 2000, 0)
    assert s.images.shape == (2000, *SHAPES[name])
    assert s.images.dtype == torch.uint8
    assert s.labels.shape == (2000,) and s.labels.dtype == torch.int64
    assert int(s.labels.min()) == 0 and int(s.labels.max()) == 9
    # every single image has real content (not blank, not saturated flat)
    flat = s.images.flatten(1).float()
    assert (flat.amax(1) - flat.amin(1)).min() >= 60
    assert float(flat.std(1).min()) > 5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 25])
def test_small_and_odd_sizes(name: str, n: int) -> None:
    s = GENERATORS[name](n, 3)
    assert s.images.shape == (n, *SHAPES[name])
    counts = torch.bincount(s.labels, minlength=10)
    assert int(counts.sum()) == n and int(counts.max() - counts.min()) <= 1
    assert all(v.shape == (n,) for v in s.factors.values())


@pytest.mark.parametrize("name", NAMES)
def test_exact_balance_and_shuffled(name: str) -> None:
    s = split(name, 2000, 0)
    assert torch.bincount(s.labels, minlength=10).tolist() == [200] * 10
    # shuffled: consecutive equal labels about 10% of the time, not ~100% as when sorted
    same_next = (s.labels[1:] == s.labels[:-1]).float().mean().item()
    assert same_next < 0.2
    assert not torch.equal(s.labels, s.labels.sort().values)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed(name: str) -> None:
    gen = GENERATORS[name]
    a, b, c = gen(300, 11), gen(300, 11), gen(300, 12)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.factors.keys() == b.factors.keys()
    assert all(torch.equal(a.factors[k], b.factors[k]) for k in a.factors)
    # another seed: different labels order and mostly different pixels
    assert not torch.equal(a.labels, c.labels)
    assert (a.images != c.images).float().mean().item() > 0.3
    assert not torch.equal(a.factors["rotation"], c.factors["rotation"])


@pytest.mark.parametrize("name", NAMES)
def test_global_rng_untouched(name: str) -> None:
    torch_state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    GENERATORS[name](50, 0)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("name", NAMES)
def test_factors(name: str) -> None:
    s = split(name, 2000, 0)
    assert REQUIRED_FACTORS[name] <= s.factors.keys()
    assert set(s.categorical) <= s.factors.keys()
    assert set(s.factor_levels) == set(s.categorical)
    for key, v in s.factors.items():
        assert v.shape == (2000,), key
        if key in s.categorical:
            assert v.dtype == torch.int64, key
            levels = s.factor_levels[key]
            assert len(levels) >= 2 and all(isinstance(x, str) and x for x in levels)
            assert len(set(levels)) == len(levels), key
            # values index the levels, and with 2000 images every level occurs
            assert set(v.tolist()) == set(range(len(levels))), key
        else:
            assert v.dtype == torch.float32, key
            assert torch.isfinite(v).all() and float(v.std()) > 0, key
    if name == "street":
        assert s.factor_levels["font"] == synthetic.STREET_FONTS
        assert len(s.factor_levels["font"]) >= 12


def test_street_factors_are_the_values_used() -> None:
    s = split("street", 2000, 0)
    f = s.factors
    for key in ("fg_r", "fg_g", "fg_b", "bg_r", "bg_g", "bg_b"):
        assert float(f[key].min()) >= 0 and float(f[key].max()) <= 1
    # the colours really contrast, as promised (luminance difference of at least 0.3)
    luma = torch.tensor([0.299, 0.587, 0.114])
    fg = torch.stack([f["fg_r"], f["fg_g"], f["fg_b"]], 1) @ luma
    bg = torch.stack([f["bg_r"], f["bg_g"], f["bg_b"]], 1) @ luma
    assert float((fg - bg).abs().min()) >= 0.3 - 1e-4
    # the recorded background colour is what the corners show (modulo shading and noise)
    img = s.images.float() / 255
    corners = img[:, :, [0, 0, -1, -1], [0, -1, 0, -1]].mean(-1)  # (N, 3)
    bg_rgb = torch.stack([f["bg_r"], f["bg_g"], f["bg_b"]], 1)
    corr = np.corrcoef(corners[:, 0].numpy(), bg_rgb[:, 0].numpy())[0, 1]
    assert corr > 0.6
    # light digits on dark signs and the other way round both occur
    bright_digit = fg > bg
    assert 0.2 < bright_digit.float().mean().item() < 0.8
    # colour images: the channels differ
    assert (img[:, 0] - img[:, 2]).abs().mean().item() > 0.03


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", None, True])
@pytest.mark.parametrize("name", NAMES)
def test_invalid_n(name: str, bad: object) -> None:
    with pytest.raises(ValueError):
        GENERATORS[name](bad, 0)  # type: ignore[arg-type]


def test_missing_fonts_raise_runtime_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import matplotlib

    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))
    synthetic._glyph_atlas.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="fonts"):
            generate_street(10, 0)
    finally:
        monkeypatch.undo()
        synthetic._glyph_atlas.cache_clear()
    assert generate_street(10, 0).images.shape == (10, 3, 32, 32)


@pytest.mark.slow
def test_import_renders_nothing() -> None:
    code = (
        "import sys, jadecli.data.synthetic as s; "
        "assert s._glyph_atlas.cache_info().currsize == 0; "
        "assert s._hand_tables.cache_info().currsize == 0; "
        "assert 'matplotlib' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=120)


# -----------------------------------------------------------------------------
# the digit is the signal, the style is not


def _features(name: str, images: torch.Tensor) -> torch.Tensor:
    x = images.float().mean(1).flatten(1)  # grayscale, (N, H*W)
    if name == "street":
        # undo colour and polarity: standardise each image and flip it so that the minority
        # (digit) pixels are the bright ones, which skews the histogram positive
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-3)
        x = x * torch.sign((x**3).mean(1, keepdim=True))
    return x


def _nearest_mean_accuracy(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor
) -> float:
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])  # (10, D)
    return (torch.cdist(xte, means).argmin(1) == yte).float().mean().item()


def _logistic_accuracy(
    xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor
) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(xtr.shape[1], 10, requires_grad=True)
    b = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((xte @ w + b).argmax(1) == yte).float().mean().item()


# measured with these seeds: street ~0.32, hand ~0.92 (chance is 0.10)
@pytest.mark.parametrize(("name", "min_acc"), [("street", 0.22), ("hand", 0.8)])
def test_centre_digit_is_learnable(name: str, min_acc: float) -> None:
    tr, te = split(name, 2000, 0), split(name, 1000, 1)
    acc = _nearest_mean_accuracy(
        _features(name, tr.images), tr.labels, _features(name, te.images), te.labels
    )
    assert acc > min_acc, acc


def _factor_matrix(s: SynthSplit) -> torch.Tensor:
    cols = []
    for key, v in s.factors.items():
        if key in s.categorical:
            cols.append(torch.nn.functional.one_hot(v, len(s.factor_levels[key])).float())
        else:
            cols.append(v[:, None].float())
    return torch.cat(cols, 1)


@pytest.mark.parametrize("name", NAMES)
def test_style_factors_do_not_predict_the_digit(name: str) -> None:
    tr, te = split(name, 2000, 0), split(name, 1000, 1)
    acc = _logistic_accuracy(_factor_matrix(tr), tr.labels, _factor_matrix(te), te.labels)
    # chance is 0.10 and the standard error with 1000 test images is ~0.01
    assert acc < 0.16, acc


def test_hand_looks_like_mnist() -> None:
    s = split("hand", 2000, 0)
    img = s.images[:, 0].float()  # (N, 28, 28)
    # black background: the outer 3-pixel frame is (nearly) empty
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[3:-3, 3:-3] = False
    assert img[:, frame].mean().item() < 2.0
    assert img.mean().item() < 60  # mostly background, like MNIST (mean ~33)
    assert (img.amax((1, 2)) >= 250).all()  # saturated pen strokes
    # centred by mass: pixel-index centre of mass close to (13.5, 13.5)
    idx = torch.arange(28, dtype=torch.float32)
    mass = img.sum((1, 2))
    cy = (img.sum(2) * idx).sum(1) / mass
    cx = (img.sum(1) * idx).sum(1) / mass
    dev = torch.stack([cx - 13.5, cy - 13.5], 1).abs()
    assert dev.mean().item() < 0.5
    assert torch.quantile(dev.amax(1), 0.99).item() < 2.0
    # fitted into a ~20 pixel box: ink height between 14 and 23 rows
    rows = (img > 64).any(2).float()
    height = 28 - rows.argmax(1) - rows.flip(1).argmax(1)
    assert height.float().mean().item() > 16 and int(height.max()) <= 23
