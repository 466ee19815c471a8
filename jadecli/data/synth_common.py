"""What the two synthetic datasets share: the split they return and the drawing helpers.

Used by `synth_street` and `synth_hand`; `jadecli.data.synthetic` is the public entry point.
Every random helper draws from the generator it is given, never from the global RNGs, so a
generator's output depends on its seed and on the order of the draws alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SynthSplit:
    """One generated split: images, labels and the style factors used to draw each image."""

    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,), 0..9
    factors: dict[str, torch.Tensor]  # name -> (N,) float32 (continuous) or int64 (categorical)
    categorical: tuple[str, ...]  # names in `factors` that are categorical
    factor_levels: dict[str, tuple[str, ...]]  # categorical name -> readable name of each level


# -----------------------------------------------------------------------------
# sampling


def check_n(n: int) -> None:
    # bool is an int subclass, but generate_street(True, 0) is certainly a bug
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")


def balanced_labels(n: int, g: torch.Generator) -> torch.Tensor:
    # exactly n // 10 per class (the first n % 10 classes get one more), in shuffled order
    labels = torch.arange(n) % 10
    return labels[torch.randperm(n, generator=g)]  # (N,)


def uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)  # (N,)


def log_uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    # for multiplicative factors (scales, aspect ratios) so that x and 1/x are equally likely
    return torch.exp(uniform(g, n, math.log(lo), math.log(hi)))  # (N,)


# -----------------------------------------------------------------------------
# drawing


def blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Gaussian blur with a different sigma per image, as one grouped (depthwise) conv."""
    n, c, h, w = x.shape
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype)  # (K,)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None].clamp_min(1e-3)) ** 2)  # (N, K)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, K), one kernel per channel
    # edge replication rather than zero padding, so borders do not darken
    y = F.pad(x.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)  # separable: rows ...
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)  # ... then columns
    return y.reshape(n, c, h, w)


def rotation_matrix(deg: torch.Tensor) -> torch.Tensor:
    # y points down in image coordinates, so positive angles turn clockwise on screen
    t = torch.deg2rad(deg)
    c, s = torch.cos(t), torch.sin(t)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 2, 2)


def shear_x_matrix(k: torch.Tensor) -> torch.Tensor:
    # x -= k * y: with y pointing down, positive k leans the top to the right (italic)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return torch.stack([torch.stack([one, -k], -1), torch.stack([zero, one], -1)], -2)


def diag_matrix(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(torch.stack([sx, sy], -1))  # (N, 2, 2)


def position_along(deg: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    # signed position of every pixel along a direction: (N,) degrees, (2, 1, H, W) -> (N, 1, H, W)
    a = torch.deg2rad(deg)[:, None, None, None]
    return torch.cos(a) * xy[0] + torch.sin(a) * xy[1]


def pixel_grid(size: int) -> torch.Tensor:
    # pixel centres in grid_sample's normalised coordinates (align_corners=False)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)  # (size*size, 2) as (x, y)
