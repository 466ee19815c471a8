"""Batch data augmentation on the training device: random affine warps and colour jitter.

A tiny labeled set (10 images per class) is memorised in a few hundred steps; small random
shifts, rotations and zooms (and, for colour images, brightness/contrast/saturation/hue-ish
jitter) make each step see a new version of it. Everything is one vectorised `grid_sample` per
batch on the device the images already live on, drawn from torch's global RNG (which the engine
reseeds every epoch, so a resumed run repeats the same draws).

    python -c "import torch; from jadecli.augment import Augment, augment; \
print(augment(torch.rand(4, 3, 28, 28), Augment()).shape)"
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    shift: float = 0.1  # max translation, as a fraction of the image side
    rotate: float = 10.0  # max rotation, degrees
    scale: float = 0.1  # max relative zoom in or out
    color: float = 0.3  # colour jitter strength (3-channel images only; 0 disables)

    @property
    def geometric(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.scale > 0


def augment(x: torch.Tensor, aug: Augment) -> torch.Tensor:
    """A randomly warped (and, for colour, jittered) copy of a float batch in [0, 1]."""
    b = x.shape[0]  # x: (B, C, H, W)
    out = x
    if aug.geometric:
        opts = {"device": x.device, "dtype": torch.float32}
        angle = (torch.rand(b, **opts) * 2 - 1) * math.radians(aug.rotate)
        zoom = 1 + (torch.rand(b, **opts) * 2 - 1) * aug.scale
        shift = (torch.rand(b, 2, **opts) * 2 - 1) * (2 * aug.shift)  # grid spans [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )  # (B, 2, 3): output pixel -> input sampling location
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        # 'border' repeats the edge: black for digits on black, the texture for colour images
        out = F.grid_sample(
            x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
    if aug.color > 0 and x.shape[1] == 3:
        out = _colour_jitter(out, aug.color)
    return out.clamp(0.0, 1.0).contiguous(memory_format=_layout(x))  # never x itself, in place


# FixMatch's strong view of an unlabeled image (--unlabeled): the same kinds of warp and jitter
# as the default augmentation at two to three times its strength, then a cut-out square.
STRONG = Augment(shift=0.2, rotate=30.0, scale=0.25, color=0.6)
CUTOUT = 0.5  # the cut-out square's side is at most this fraction of the image side


def strong_augment(x: torch.Tensor) -> torch.Tensor:
    """A strongly augmented copy of a float batch in [0, 1]: `STRONG`, then a random square of
    up to half the image side filled with mid-grey in every image (cut-out)."""
    out = augment(x, STRONG)  # (B, C, H, W)
    b, _, h, w = out.shape
    dev = out.device
    side = (torch.rand(b, 1, 1, device=dev) * CUTOUT * min(h, w)).clamp_min(1)  # (B, 1, 1)
    cy, cx = torch.rand(b, 1, 1, device=dev) * h, torch.rand(b, 1, 1, device=dev) * w
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    hole = ((rows - cy).abs() <= side / 2) & ((cols - cx).abs() <= side / 2)  # (B, H, W)
    return out.masked_fill(hole[:, None], 0.5)


def _colour_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    b = x.shape[0]

    def factor(*shape: int) -> torch.Tensor:
        return 1 + (torch.rand(b, *shape, 1, 1, device=x.device) * 2 - 1) * strength

    grey = x.mean(1, keepdim=True)  # (B, 1, H, W)
    x = grey + (x - grey) * factor(1)  # saturation
    x = x * factor(3)  # per-channel gain: shifts the hue and the brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor(1)  # contrast
    # Half of the images swap their channels at random: the digit's colour then carries no class.
    perm = torch.rand(b, 3, device=x.device).argsort(1)  # (B, 3) random permutations
    keep = torch.rand(b, device=x.device) < 0.5
    perm[keep] = torch.arange(3, device=x.device)
    return torch.gather(x, 1, perm[:, :, None, None].expand_as(x))


def style_mix(x_aux: torch.Tensor, primary: torch.Tensor, p: float) -> torch.Tensor:
    """Redraw a fraction `p` of auxiliary images (float, [0, 1]) in the primary's style (the
    labeled `primary` images, uint8 or float in [0, 1]): |T - x|, where the
    texture T is a random labeled primary image with its tiles (an 8 x 8 grid) shuffled, so it
    keeps the primary's colours and textures but not its digit. This is how MNIST-M was made
    from MNIST (with photo patches for T); it teaches the shared trunk the primary's look from
    thousands of labeled auxiliary images instead of the primary's handful."""
    b, _, h, w = x_aux.shape  # the primary's channels and size
    dev = x_aux.device
    # every draw for the whole batch, in a fixed order (so the stream of random numbers does not
    # depend on which images are picked); the textures are then made for the picked ones only
    idx = torch.randint(len(primary), (b,), device=dev)
    tiles = _tiles(h, 8)[0] * _tiles(w, 8)[0]
    order = torch.rand(b, tiles, device=dev).argsort(1)  # (B, tiles) random permutations
    keep = torch.rand(b, device=dev) < 0.5  # the others are mirrored
    rows = (torch.rand(b, device=dev) < p).nonzero().flatten()  # the images redrawn
    out = x_aux.float().clone(memory_format=_layout(x_aux))  # (B, C, H, W)
    if len(rows):
        t = primary[idx[rows].to(primary.device)].to(dev).float()  # (R, C, H, W)
        t = _shuffle_tiles(t / 255 if primary.dtype == torch.uint8 else t, order[rows])
        t = torch.where(keep[rows, None, None, None], t, t.flip(3))
        out[rows] = (t - out[rows]).abs()
    return out


def _tiles(side: int, grid: int) -> tuple[int, int]:
    """(tiles, tile side) along one side of an image cut into a `grid` x `grid` grid."""
    tile = max(side // grid, 1)
    return side // tile, tile


def _shuffle_tiles(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each image's tiles (an 8 x 8 grid) in the order `order` (B, tiles) gives."""
    b, c, h, w = t.shape
    (gh, th), (gw, tw) = _tiles(h, 8), _tiles(w, 8)
    tiles = t[:, :, : gh * th, : gw * tw].reshape(b, c, gh, th, gw, tw)
    tiles = tiles.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, th, tw)
    tiles = torch.gather(tiles, 1, order[:, :, None, None, None].expand_as(tiles))
    out = tiles.reshape(b, gh, gw, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out = out.reshape(b, c, gh * th, gw * tw)
    if (gh * th, gw * tw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="nearest")
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
