"""Built-in synthetic digit datasets: no files, no network, deterministic from a seed.

Two datasets of the digits 0-9 drawn in two different styles, so that a JADE model can be
trained and tested end to end on any machine:

- ``street`` (the primary): colour ``uint8`` images of shape (N, 3, 32, 32) that look like
  SVHN street-number crops. The centre digit is rendered from one of the fonts that ship with
  matplotlib, in a random colour on a shaded, textured background of contrasting colour,
  with partially visible neighbouring digits at the left/right edges, random rotation, scale,
  aspect, shear and shift, then blurred and noised like a small photo.
- ``hand`` (the auxiliary): grayscale ``uint8`` images of shape (N, 1, 28, 28) that look like
  MNIST handwriting: bright strokes on a black background, the digit scaled into a 20x20 box
  and centred by its centre of mass in the 28x28 frame. Each digit is drawn from one of three
  hand-designed pen skeletons per class, distorted, slanted, stretched and rotated per image,
  and rendered with a per-image pen width.

Every nuisance ("style") parameter that was sampled is returned in ``SynthSplit.factors``
with one value per image, so that disentanglement can be measured later (e.g. probing font,
colour or rotation from a latent code). All style factors are sampled independently of the
label. Same ``(n, seed)`` gives bit-identical output; the global RNGs are never touched.

Example::

    python -c "from jadecli.data.synthetic import generate_street; \\
print(generate_street(100, 0).images.shape)"
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# bump whenever the generated pixels (or factors) change: downstream caches key on it
SYNTH_VERSION = 1


@dataclass(frozen=True)
class SynthSplit:
    """One generated split: images, labels and the style factors used to draw each image."""

    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,), 0..9
    factors: dict[str, torch.Tensor]  # name -> (N,) float32 (continuous) or int64 (categorical)
    categorical: tuple[str, ...]  # names in `factors` that are categorical
    factor_levels: dict[str, tuple[str, ...]]  # categorical name -> readable name of each level


# -----------------------------------------------------------------------------
# shared helpers


def _check_n(n: int) -> None:
    # bool is an int subclass, but generate_street(True, 0) is certainly a bug
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")


def _balanced_labels(n: int, g: torch.Generator) -> torch.Tensor:
    # exactly n // 10 per class (the first n % 10 classes get one more), in shuffled order
    labels = torch.arange(n) % 10
    return labels[torch.randperm(n, generator=g)]  # (N,)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)  # (N,)


def _log_uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    # for multiplicative factors (scales, aspect ratios) so that x and 1/x are equally likely
    return torch.exp(_uniform(g, n, math.log(lo), math.log(hi)))  # (N,)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
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


def _rotation(deg: torch.Tensor) -> torch.Tensor:
    # y points down in image coordinates, so positive angles turn clockwise on screen
    t = torch.deg2rad(deg)
    c, s = torch.cos(t), torch.sin(t)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 2, 2)


def _shear_x(k: torch.Tensor) -> torch.Tensor:
    # x -= k * y: with y pointing down, positive k leans the top to the right (italic)
    one, zero = torch.ones_like(k), torch.zeros_like(k)
    return torch.stack([torch.stack([one, -k], -1), torch.stack([zero, one], -1)], -2)


def _diag(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(torch.stack([sx, sy], -1))  # (N, 2, 2)


def _along(deg: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    # signed position of every pixel along a direction: (N,) degrees, (2, 1, H, W) -> (N, 1, H, W)
    a = torch.deg2rad(deg)[:, None, None, None]
    return torch.cos(a) * xy[0] + torch.sin(a) * xy[1]


def _pixel_grid(size: int) -> torch.Tensor:
    # pixel centres in grid_sample's normalised coordinates (align_corners=False)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2)  # (size*size, 2) as (x, y)


# -----------------------------------------------------------------------------
# street: SVHN-like colour crops rendered from matplotlib's bundled fonts

# faces in matplotlib/mpl-data/fonts/ttf that contain ordinary lining digits; more faces means
# more style variety. There is no condensed face in recent matplotlib, so narrow digits come
# from the random `aspect` factor instead.
STREET_FONTS: tuple[str, ...] = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "cmr10",
    "cmb10",
    "cmss10",
    "cmtt10",
)
_TILE = 32  # glyph masks are rendered once into TILE x TILE tiles
_GLYPH_H = 1.5  # digit height in tile units (the tile spans [-1, 1], so 75% of the tile)
_STREET_SIZE = 32
_CHUNK = 2048  # images composed per step, to bound memory (the pixel noise is drawn per chunk)


@functools.lru_cache(maxsize=1)
def _glyph_atlas() -> tuple[torch.Tensor, torch.Tensor]:
    """Render every font x digit once. Returns (atlas, widths).

    atlas: (1, 1, TILE, F*10*TILE) float32 coverage in [0, 1], tile f*10+d holds digit d of
    font f, centred, with height _GLYPH_H tile units and an empty border so bilinear sampling
    never bleeds between tiles. widths: (F, 10) glyph widths in tile units.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in STREET_FONTS if not (font_dir / f"{f}.ttf").is_file()]
    if missing:
        raise RuntimeError(
            f"matplotlib fonts needed by the synthetic 'street' dataset are missing from "
            f"{font_dir}: {', '.join(missing)}. Reinstall matplotlib (pip install matplotlib)."
        )
    px_per_unit = _TILE / 2  # tile pixels per tile unit
    tiles, widths = [], []
    for name in STREET_FONTS:
        prop = FontProperties(fname=str(font_dir / f"{name}.ttf"))
        paths = [TextPath((0, 0), str(d), size=1, prop=prop) for d in range(10)]
        exts = [p.get_extents() for p in paths]
        # one scale per font (tallest digit -> _GLYPH_H), keeping the font's own proportions
        height = max(e.height for e in exts)
        if not math.isfinite(height) or height <= 0:
            raise RuntimeError(f"font {name!r} has no usable digit glyphs")
        scale = _GLYPH_H * px_per_unit / height
        for path, ext in zip(paths, exts, strict=True):
            renderer = RendererAgg(_TILE, _TILE, 72)
            gc = renderer.new_gc()
            gc.set_linewidth(0)  # fill only, no outline
            to_tile = (
                Affine2D()
                .translate(-(ext.x0 + ext.x1) / 2, -(ext.y0 + ext.y1) / 2)
                .scale(scale)
                .translate(_TILE / 2, _TILE / 2)
            )
            renderer.draw_path(gc, path, to_tile, rgbFace=(1.0, 1.0, 1.0))
            alpha = torch.frombuffer(bytearray(renderer.buffer_rgba()), dtype=torch.uint8)
            tiles.append(alpha.reshape(_TILE, _TILE, 4)[..., 3].float() / 255)  # (T, T)
            widths.append(ext.width * scale / px_per_unit)
    stack = torch.stack(tiles)  # (F*10, T, T)
    # the outermost rows and columns of every tile must be empty (see docstring)
    border = stack.clone()
    border[:, 1:-1, 1:-1] = 0
    if border.any():
        raise RuntimeError("a digit glyph does not fit its tile; lower _GLYPH_H")
    atlas = stack.permute(1, 0, 2).reshape(1, 1, _TILE, -1)  # (1, 1, T, F*10*T)
    return atlas, torch.tensor(widths, dtype=torch.float32).reshape(len(STREET_FONTS), 10)


def _contrasting_colours(
    g: torch.Generator, n: int, min_contrast: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (fg, bg) RGB colours in [0, 1] whose luminances differ by at least min_contrast."""
    luma = torch.tensor([0.299, 0.587, 0.114])

    def colour() -> torch.Tensor:
        # gray plus a random amount of a random chroma: real signs are often washed out
        base = torch.rand(n, 3, generator=g)
        gray = base.mean(1, keepdim=True)
        sat = 0.9 * torch.rand(n, 1, generator=g) ** 1.5
        return gray + sat * (base - gray)  # (N, 3)

    fg, bg = colour(), colour()
    # push fg toward white on dark backgrounds and toward black on light ones, just far
    # enough to reach the minimum luminance difference (no rejection loop, fully vectorised)
    y_fg, y_bg = fg @ luma, bg @ luma  # (N,)
    target = (y_bg < 0.5).float()  # 1 = white, 0 = black
    sign = target * 2 - 1
    need = (min_contrast - sign * (y_fg - y_bg)).clamp_min(0)  # luminance still missing
    t = (need / (sign * (target - y_fg)).clamp_min(1e-6)).clamp(0, 1)
    fg = fg + t[:, None] * (target[:, None] - fg)
    return fg, bg


def generate_street(n: int, seed: int) -> SynthSplit:
    """SVHN-like street-number crops: uint8 images (n, 3, 32, 32), balanced labels 0..9.

    Factors (continuous unless noted): font (categorical, STREET_FONTS), fg_r/fg_g/fg_b and
    bg_r/bg_g/bg_b (colours in [0, 1] before shading), rotation (degrees, clockwise), scale
    (digit height / image height), aspect (width stretch), shear (x shift per unit y, positive
    leans right), shift_x/shift_y (pixels, right/down), gap (space to neighbours, in digit
    heights), left/right (categorical, neighbour digit present), light (strength of the linear
    shading), light_angle (degrees), texture (background texture amplitude), edge (relative
    brightness step of a soft line across the background, 0 = none), edge_angle (degrees),
    edge_offset (distance of that line from the centre, in half-widths), blur (Gaussian sigma
    in pixels), noise (pixel noise std on the [0, 1] scale).
    """
    _check_n(n)
    atlas, widths = _glyph_atlas()  # (1, 1, T, F*10*T), (F, 10)
    g = torch.Generator().manual_seed(seed)
    f = _street_factors(n, g)
    geometry = _street_geometry(f, widths)
    # background texture: luminance plus a weaker colour drift, drawn at 4x4 and upsampled
    # smoothly (bicubic, written as a matrix so that it is one cheap einsum per chunk)
    tex_lo = torch.randn(n, 1, 4, 4, generator=g) + 0.3 * torch.randn(n, 3, 4, 4, generator=g)
    images = torch.empty(n, 3, _STREET_SIZE, _STREET_SIZE, dtype=torch.uint8)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        images[sl] = _draw_street(f, geometry, tex_lo, atlas, sl, g)
    font, fg, bg = f["font"], f["fg"], f["bg"]
    factors = {
        "font": font,
        "fg_r": fg[:, 0], "fg_g": fg[:, 1], "fg_b": fg[:, 2],
        "bg_r": bg[:, 0], "bg_g": bg[:, 1], "bg_b": bg[:, 2],
        **{name: f[name] for name in _STREET_FACTORS},
    }  # fmt: skip
    return SynthSplit(
        images=images,
        labels=f["labels"],
        factors={k: v.contiguous() for k, v in factors.items()},
        categorical=("font", "left", "right"),
        factor_levels={
            "font": STREET_FONTS,
            "left": ("absent", "present"),
            "right": ("absent", "present"),
        },
    )


# The continuous and binary factors of a street image, in the order SynthSplit records them
# (after font and the colours).
_STREET_FACTORS = (
    "rotation", "scale", "aspect", "shear", "shift_x", "shift_y", "gap", "left", "right",
    "light", "light_angle", "texture", "edge", "edge_angle", "edge_offset", "blur", "noise",
)  # fmt: skip


def _street_factors(n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Everything about each street image, sampled up front and independently of the label
    (the draw order is part of the dataset: changing it changes every image)."""
    f: dict[str, torch.Tensor] = {"labels": _balanced_labels(n, g)}
    f["font"] = torch.randint(len(STREET_FONTS), (n,), generator=g)
    f["fg"], f["bg"] = _contrasting_colours(g, n, min_contrast=0.3)  # (N, 3) each
    f["rotation"] = _uniform(g, n, -12.0, 12.0)
    f["scale"] = _uniform(g, n, 0.55, 0.85)
    f["aspect"] = _log_uniform(g, n, 0.75, 1.3)
    f["shear"] = _uniform(g, n, -0.15, 0.15)
    f["shift_x"] = _uniform(g, n, -2.5, 2.5)
    f["shift_y"] = _uniform(g, n, -2.0, 2.0)
    f["gap"] = _uniform(g, n, 0.05, 0.3)
    f["left"] = (torch.rand(n, generator=g) < 0.6).long()  # SVHN crops of multi-digit numbers
    f["right"] = (torch.rand(n, generator=g) < 0.6).long()
    f["left_digit"] = torch.randint(10, (n,), generator=g)  # neighbours: any digit, same font
    f["right_digit"] = torch.randint(10, (n,), generator=g)
    f["light"] = _uniform(g, n, 0.0, 0.4)
    f["light_angle"] = _uniform(g, n, -180.0, 180.0)
    f["texture"] = _uniform(g, n, 0.0, 0.25)
    f["edge"] = _uniform(g, n, -0.4, 0.4)  # a sign border or shadow line crossing the background
    f["edge_angle"] = _uniform(g, n, -180.0, 180.0)
    f["edge_offset"] = _uniform(g, n, 0.4, 1.0)  # its distance from the centre, in half-widths
    f["blur"] = _uniform(g, n, 0.3, 1.1)
    f["noise"] = _uniform(g, n, 0.0, 0.05)
    return f


def _street_geometry(f: dict[str, torch.Tensor], widths: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inverse affine map from output pixels to centre-glyph tile coordinates, and where
    the neighbours sit. Forward is tile -> R @ Shear @ diag(k * aspect, k) @ tile + t, with k
    the tile-unit to output-unit ratio that makes the digit `scale` of the image height."""
    k = 2 * f["scale"] / _GLYPH_H
    fwd = _rotation(f["rotation"]) @ _shear_x(f["shear"]) @ _diag(k * f["aspect"], k)
    shift = torch.stack([f["shift_x"], f["shift_y"]], -1) * (2 / _STREET_SIZE)  # -> grid units
    # neighbours sit in the centre digit's (rotated, sheared) frame, one gap beside it
    font = f["font"]
    wc = widths[font, f["labels"]]
    gap = f["gap"] * _GLYPH_H
    return {
        "inv": torch.linalg.inv(fwd),  # (N, 2, 2)
        "shift": shift,  # (N, 2)
        "d_left": (wc + widths[font, f["left_digit"]]) / 2 + gap,  # (N,)
        "d_right": (wc + widths[font, f["right_digit"]]) / 2 + gap,
    }


def _draw_street(
    f: dict[str, torch.Tensor],
    geo: dict[str, torch.Tensor],
    tex_lo: torch.Tensor,
    atlas: torch.Tensor,
    sl: slice,
    g: torch.Generator,
) -> torch.Tensor:
    """The images `sl` (uint8 (m, 3, H, W)): glyphs, background, lighting, blur and noise."""
    m = sl.stop - sl.start
    grid = _pixel_grid(_STREET_SIZE)  # (P, 2)
    xy = grid.T.reshape(2, 1, _STREET_SIZE, _STREET_SIZE)  # (2, 1, H, W): x, y in [-1, 1]
    u = torch.einsum("nij,npj->npi", geo["inv"][sl], grid - geo["shift"][sl, None])  # (m, P, 2)
    # the three glyphs (left, centre, right) sample the atlas at shifted tile coordinates.
    # Clamping to the tile keeps every read inside its own tile: tile borders are empty.
    offsets = torch.stack([-geo["d_left"][sl], torch.zeros(m), geo["d_right"][sl]])  # (3, m)
    tiles = torch.stack([f["left_digit"][sl], f["labels"][sl], f["right_digit"][sl]])
    tiles = tiles + 10 * f["font"][sl]
    ux = (u[..., 0] + offsets[..., None]).clamp_(-1, 1)  # (3, m, P)
    uy = u[..., 1].clamp(-1, 1).expand_as(ux)
    ax = (2 * tiles[..., None] + ux + 1) / (len(STREET_FONTS) * 10) - 1  # tile -> atlas coords
    samp = torch.stack([ax, uy], -1).reshape(1, 3 * m * _STREET_SIZE, _STREET_SIZE, 2)
    cover = F.grid_sample(atlas, samp, mode="bilinear", align_corners=False)
    cover = cover.reshape(3, m, 1, _STREET_SIZE, _STREET_SIZE)
    present = torch.stack([f["left"][sl], torch.ones(m, dtype=torch.long), f["right"][sl]])
    alpha = (cover * present[..., None, None, None]).amax(0)  # (m, 1, H, W)

    def per_image(name: str) -> torch.Tensor:
        return f[name][sl, None, None, None]  # (m, 1, 1, 1)

    # background: flat colour, shaded by the texture and a soft edge across the sign
    up = F.interpolate(
        torch.eye(4)[:, None, None], size=(1, _STREET_SIZE), mode="bicubic", align_corners=True
    )[:, 0, 0].T  # (H, 4)
    tex = torch.einsum("hi,ncij,wj->nchw", up, tex_lo[sl], up)  # (m, 3, H, W)
    along = _along(f["edge_angle"][sl], xy) - per_image("edge_offset")
    step = torch.sigmoid(along * 12)  # (m, 1, H, W), a soft step a few pixels wide
    shade = 1 + per_image("texture") * tex + per_image("edge") * step
    img = torch.lerp(f["bg"][sl, :, None, None] * shade, f["fg"][sl, :, None, None], alpha)
    # a linear lighting gradient over the whole crop (sign, shade, digits alike)
    img = img * (1 + per_image("light") * _along(f["light_angle"][sl], xy))
    img = _blur(img, f["blur"][sl])
    img = img + per_image("noise") * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


# -----------------------------------------------------------------------------
# hand: MNIST-like pen strokes

# Pen skeletons in a unit box (x right, y down; the box is made narrower later). Each digit
# has exactly three variants so that the `variant` factor is independent of the label. A
# variant is a list of strokes; a stroke is the list of points the pen passes through
# (smoothly interpolated), and a stroke whose first and last points coincide is drawn as a
# closed loop. Strokes that share an exact point stay joined there under distortion.
_Pt = tuple[float, float]


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, n: int = 7, start: float = -90.0
) -> list[_Pt]:
    pts = [
        (
            cx + rx * math.cos(math.radians(start - 360 * i / n)),
            cy + ry * math.sin(math.radians(start - 360 * i / n)),
        )
        for i in range(n)
    ]
    return [*pts, pts[0]]  # closed: counter-clockwise on screen from `start`


# fmt: off
_DIGITS: tuple[tuple[tuple[_Pt, ...], ...], ...] = tuple(
    tuple(tuple(s) for s in v)
    for v in [
        # 0: oval; open oval overlapping at the top; narrow leaning oval
        [_ellipse(0.5, 0.5, 0.45, 0.5, 8)],
        [[(0.65, 0.05), (0.35, 0.02), (0.08, 0.3), (0.05, 0.7), (0.35, 0.98), (0.75, 0.92),
          (0.95, 0.55), (0.85, 0.15), (0.5, 0.0), (0.3, 0.1)]],
        [[(0.62, 0.0), (0.22, 0.15), (0.05, 0.6), (0.3, 1.0), (0.75, 0.88), (0.95, 0.4),
          (0.62, 0.0)]],
        # 1: plain bar; with a flag; with flag and foot
        [[(0.55, 0.0), (0.45, 1.0)]],
        [[(0.2, 0.25), (0.55, 0.0)], [(0.55, 0.0), (0.5, 1.0)]],
        [[(0.25, 0.22), (0.55, 0.0)], [(0.55, 0.0), (0.52, 1.0)], [(0.2, 1.0), (0.85, 1.0)]],
        # 2: round top with flat base; curl at the bottom; Z-like
        [[(0.08, 0.25), (0.3, 0.03), (0.65, 0.0), (0.9, 0.2), (0.82, 0.48), (0.45, 0.75),
          (0.05, 1.0)], [(0.05, 1.0), (0.95, 0.98)]],
        [[(0.1, 0.2), (0.45, 0.0), (0.85, 0.15), (0.8, 0.45), (0.4, 0.78), (0.12, 0.97),
          (0.1, 0.85), (0.25, 0.84), (0.45, 0.95), (0.95, 0.97)]],
        [[(0.05, 0.15), (0.35, 0.0), (0.75, 0.05), (0.85, 0.3), (0.1, 1.0)],
         [(0.1, 1.0), (0.6, 0.94), (1.0, 1.0)]],
        # 3: two bowls with a cusp; flat top; smooth single stroke
        [[(0.1, 0.12), (0.45, 0.0), (0.85, 0.15), (0.75, 0.38), (0.4, 0.48)],
         [(0.4, 0.48), (0.85, 0.62), (0.9, 0.85), (0.55, 1.0), (0.08, 0.88)]],
        [[(0.1, 0.0), (0.9, 0.0)], [(0.9, 0.0), (0.4, 0.42)],
         [(0.4, 0.42), (0.8, 0.55), (0.9, 0.8), (0.55, 1.0), (0.1, 0.9)]],
        [[(0.05, 0.2), (0.4, 0.0), (0.85, 0.12), (0.7, 0.4), (0.45, 0.48), (0.8, 0.6),
          (0.9, 0.85), (0.5, 1.0), (0.05, 0.85)]],
        # 4: open top; closed triangle; open with curved strokes
        [[(0.25, 0.0), (0.05, 0.62)], [(0.05, 0.62), (0.95, 0.62)], [(0.72, 0.15), (0.72, 1.0)]],
        [[(0.68, 0.0), (0.02, 0.68)], [(0.02, 0.68), (0.98, 0.68)], [(0.68, 0.0), (0.7, 1.0)]],
        [[(0.2, 0.0), (0.12, 0.35), (0.1, 0.55)], [(0.1, 0.55), (0.5, 0.58), (0.95, 0.5)],
         [(0.7, 0.0), (0.68, 0.5), (0.65, 1.0)]],
        # 5: bar, stem, bowl; stem first then bar; smaller bowl
        [[(0.9, 0.0), (0.2, 0.02)], [(0.2, 0.02), (0.15, 0.45)],
         [(0.15, 0.45), (0.5, 0.36), (0.85, 0.52), (0.85, 0.82), (0.5, 1.0), (0.08, 0.9)]],
        [[(0.25, 0.0), (0.18, 0.42), (0.55, 0.35), (0.9, 0.6), (0.75, 0.92), (0.4, 1.0),
          (0.05, 0.88)], [(0.25, 0.0), (0.95, 0.02)]],
        [[(0.85, 0.02), (0.25, 0.0)], [(0.25, 0.0), (0.2, 0.5)],
         [(0.2, 0.5), (0.6, 0.42), (0.9, 0.7), (0.6, 0.98), (0.2, 0.95)]],
        # 6: curved stem into a loop; straighter stem; curled top
        [[(0.75, 0.0), (0.4, 0.2), (0.15, 0.55), (0.18, 0.88), (0.5, 1.0), (0.82, 0.85),
          (0.8, 0.6), (0.5, 0.5), (0.18, 0.68)]],
        [[(0.6, 0.0), (0.3, 0.35), (0.15, 0.75), (0.35, 1.0), (0.7, 0.95), (0.8, 0.7),
          (0.55, 0.55), (0.2, 0.72)]],
        [[(0.85, 0.1), (0.6, 0.0), (0.3, 0.15), (0.12, 0.5), (0.15, 0.85), (0.45, 1.0),
          (0.8, 0.88), (0.85, 0.62), (0.55, 0.5), (0.2, 0.6)]],
        # 7: plain; with crossbar; with a tick on the left of the bar
        [[(0.0, 0.02), (1.0, 0.0)], [(1.0, 0.0), (0.6, 0.45), (0.35, 1.0)]],
        [[(0.0, 0.02), (1.0, 0.0)], [(1.0, 0.0), (0.6, 0.45), (0.35, 1.0)],
         [(0.3, 0.52), (0.9, 0.5)]],
        [[(0.0, 0.2), (0.02, 0.02)], [(0.02, 0.02), (1.0, 0.05)],
         [(1.0, 0.05), (0.55, 0.55), (0.4, 1.0)]],
        # 8: one figure-of-eight stroke; two stacked loops; big-bottomed single stroke
        [[(0.8, 0.12), (0.5, 0.0), (0.18, 0.12), (0.22, 0.35), (0.5, 0.5), (0.82, 0.7),
          (0.78, 0.92), (0.5, 1.0), (0.18, 0.9), (0.2, 0.68), (0.5, 0.5), (0.75, 0.33),
          (0.8, 0.12)]],
        [_ellipse(0.5, 0.25, 0.3, 0.24, 6), _ellipse(0.5, 0.74, 0.4, 0.26, 7, 90.0)],
        [[(0.5, 0.45), (0.25, 0.3), (0.3, 0.05), (0.6, 0.0), (0.75, 0.2), (0.5, 0.45),
          (0.12, 0.7), (0.3, 0.98), (0.75, 0.95), (0.88, 0.7), (0.5, 0.45)]],
        # 9: loop with straight stem; loop with curved tail; single stroke
        [_ellipse(0.45, 0.27, 0.38, 0.26, 6, 0.0), [(0.83, 0.27), (0.8, 1.0)]],
        [[(0.85, 0.1), (0.5, 0.0), (0.15, 0.15), (0.15, 0.42), (0.5, 0.52), (0.85, 0.35),
          (0.85, 0.1)], [(0.85, 0.1), (0.85, 0.55), (0.7, 0.85), (0.45, 1.0)]],
        [[(0.85, 0.3), (0.55, 0.45), (0.2, 0.4), (0.1, 0.18), (0.4, 0.0), (0.8, 0.05),
          (0.88, 0.3), (0.8, 0.65), (0.7, 1.0)]],
    ]
)
# fmt: on
HAND_VARIANTS = 3
_HAND_SIZE = 28
_HAND_WIDTH = 0.7  # skeletons are designed in a unit square; real digits are narrower
_BEZIER_STEPS = 6  # samples per curve piece: pieces are short, so spacing stays ~1 px
_MAX_STRAIGHT = 0.3  # straight strokes are split so that distortion can bend them too


def _catmull_rom(stroke: Sequence[int], pts: Sequence[_Pt]) -> list[list[dict[int, float]]]:
    """Bezier control points (as weights over point indices) of the smooth curve through a
    stroke; each piece is 4 controls. Linear in the points, so it can be precomputed."""
    closed = len(stroke) > 2 and stroke[0] == stroke[-1]
    ring = list(stroke[:-1]) if closed else list(stroke)
    m = len(ring)

    def at(i: int) -> dict[int, float]:
        if closed:
            return {ring[i % m]: 1.0}
        if 0 <= i < m:
            return {ring[i]: 1.0}
        # reflect past the ends, so the curve leaves an end heading to its neighbour
        end, nxt = (ring[0], ring[1]) if i < 0 else (ring[-1], ring[-2])
        return {end: 2.0, nxt: -1.0}

    def lin(*terms: tuple[float, dict[int, float]]) -> dict[int, float]:
        out: dict[int, float] = {}
        for w, d in terms:
            for k, v in d.items():
                out[k] = out.get(k, 0.0) + w * v
        return out

    pieces = []
    for i in range(m if closed else m - 1):
        p0, p1, prev, nxt = at(i), at(i + 1), at(i - 1), at(i + 2)
        pieces.append(
            [
                p0,
                lin((1.0, p0), (1 / 6, p1), (-1 / 6, prev)),
                lin((1.0, p1), (-1 / 6, nxt), (1 / 6, p0)),
                p1,
            ]
        )
    return pieces


@functools.lru_cache(maxsize=1)
def _hand_tables() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precompute, per (digit, variant): its distinct points (V, Q, 2), the linear map from
    points to Bezier controls (V, B*4, Q), and which of the B pieces are real (V, B)."""
    variants = []
    for strokes in _DIGITS:
        pts: list[_Pt] = []
        index: dict[_Pt, int] = {}

        def idx(p: _Pt, pts: list[_Pt] = pts, index: dict[_Pt, int] = index) -> int:
            if p not in index:  # identical points are shared, keeping joins joined
                index[p] = len(pts)
                pts.append(p)
            return index[p]

        pieces = []
        for stroke in strokes:
            if len(stroke) == 2:  # subdivide straight strokes (the curve stays straight)
                (x0, y0), (x1, y1) = stroke
                k = max(1, math.ceil(math.hypot(x1 - x0, y1 - y0) / _MAX_STRAIGHT))
                stroke = tuple(
                    (x0 + (x1 - x0) * i / k, y0 + (y1 - y0) * i / k) for i in range(k + 1)
                )
            pieces += _catmull_rom([idx(p) for p in stroke], pts)
        variants.append((pts, pieces))
    n_pts = max(len(p) for p, _ in variants)
    n_pieces = max(len(c) for _, c in variants)
    points = torch.zeros(len(variants), n_pts, 2)
    weights = torch.zeros(len(variants), n_pieces * 4, n_pts)
    valid = torch.zeros(len(variants), n_pieces, dtype=torch.bool)
    for v, (pts, pieces) in enumerate(variants):
        points[v, : len(pts)] = torch.tensor(pts)
        valid[v, : len(pieces)] = True
        for j, piece in enumerate(pieces):
            for c, ctrl in enumerate(piece):
                for q, w in ctrl.items():
                    weights[v, 4 * j + c, q] = w
    return points, weights, valid


def _field(p: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """A smooth random displacement of unit-box points: p (N, Q, 2), coef (N, 2, 6)."""
    x, y = p[..., 0] - 0.5, p[..., 1] - 0.5
    basis = torch.stack(
        [
            x * y,
            x * x - 1 / 12,
            y * y - 1 / 12,
            torch.sin(math.pi * x),
            torch.sin(math.pi * y),
            torch.sin(math.pi * x) * torch.sin(math.pi * y),
        ],
        -1,
    )  # (N, Q, 6)
    return torch.einsum("nqb,ncb->nqc", basis, coef)  # (N, Q, 2)


def generate_hand(n: int, seed: int) -> SynthSplit:
    """MNIST-like handwritten digits: uint8 images (n, 1, 28, 28), balanced labels 0..9.

    Factors (continuous unless noted): variant (categorical, which of the three pen
    skeletons of the digit, "a"/"b"/"c"), thickness (pen radius: the Gaussian sigma of the
    stroke profile, in pixels), slant (x shift per unit y, positive leans right), aspect
    (width stretch before size normalisation), size (side of the box the digit is fitted
    into, in pixels; MNIST uses 20), distortion (amplitude of the smooth random warp and the
    point jitter), rotation (degrees, clockwise).
    """
    _check_n(n)
    points, weights, valid = _hand_tables()  # (V, Q, 2), (V, B*4, Q), (V, B)
    g = torch.Generator().manual_seed(seed)

    # ---- sample everything per image up front (independently of the label)
    labels = _balanced_labels(n, g)
    variant = torch.randint(HAND_VARIANTS, (n,), generator=g)
    thickness = _uniform(g, n, 0.65, 1.1)
    slant = _uniform(g, n, -0.15, 0.4)  # people lean right far more often than left
    aspect = _log_uniform(g, n, 0.8, 1.35)
    size = _uniform(g, n, 18.0, 20.0)
    distortion = _uniform(g, n, 0.0, 1.0)
    rotation = _uniform(g, n, -12.0, 12.0)
    coef = torch.randn(n, 2, 6, generator=g)
    jitter = torch.randn(n, points.shape[1], 2, generator=g)

    # ---- pen skeleton: distort the points, then interpolate them with Bezier pieces
    vid = labels * HAND_VARIANTS + variant
    pts = points[vid]  # (N, Q, 2)
    amp = distortion[:, None, None]
    pts = pts + amp * (0.07 * _field(pts, coef) + 0.035 * jitter)
    ctrl = (weights[vid] @ pts).reshape(n, -1, 4, 2)  # (N, B, 4, 2)
    t = torch.linspace(0, 1, _BEZIER_STEPS + 1)[:, None]
    bern = torch.cat([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], 1)
    curve = torch.einsum("tk,nbkd->nbtd", bern, ctrl)  # (N, B, S+1, 2)
    # affine pen style about the box centre: stretch, slant, rotate
    lin = _rotation(rotation) @ _shear_x(slant) @ _diag(_HAND_WIDTH * aspect, torch.ones(n))
    curve = torch.einsum("nij,nbtj->nbti", lin, curve - 0.5)

    # ---- the ink: short line pieces between consecutive samples, weighted by their length
    mid = (curve[:, :, 1:] + curve[:, :, :-1]) / 2  # (N, B, S, 2)
    length = (curve[:, :, 1:] - curve[:, :, :-1]).norm(dim=-1)  # (N, B, S)
    length = length * valid[vid][..., None]  # padding pieces carry no ink
    mid, length = mid.reshape(n, -1, 2), length.reshape(n, -1)  # (N, M, 2), (N, M)
    # MNIST normalisation: fit the inked box into size x size pixels, then put the centre
    # of mass at the frame centre (here: of the skeleton, which is the ink up to the caps)
    on = (length > 0)[..., None]
    lo = torch.where(on, mid, torch.full_like(mid, math.inf)).amin(1)  # (N, 2)
    hi = torch.where(on, mid, torch.full_like(mid, -math.inf)).amax(1)
    extent = (hi - lo).amax(1)  # (N,)
    px = (size - 4 * thickness) / extent  # pixels per unit, ink reaches ~2 sigma past it
    com = (mid * length[..., None]).sum(1) / length.sum(1, keepdim=True)  # (N, 2)
    mid = (mid - com[:, None]) * px[:, None, None] + _HAND_SIZE / 2  # pixel coordinates
    ink = length * px[:, None]  # (N, M) ink per piece, in pixels of stroke length

    # ---- render: a sum of Gaussian pen dabs is separable, so one batched matmul
    # image[y, x] = sum_m ink_m * G(y - y_m) * G(x - x_m)
    centres = torch.arange(_HAND_SIZE, dtype=torch.float32) + 0.5  # pixel centres
    sig = thickness[:, None, None]
    gx = torch.exp((centres - mid[..., 0:1]).square_() * (-0.5 / sig**2))  # (N, M, W)
    gy = torch.exp((centres - mid[..., 1:2]).square_() * (-0.5 / sig**2))  # (N, M, H)
    # a long straight stroke peaks at sqrt(2 pi) sigma: normalise that to 1
    ink = ink / (math.sqrt(2 * math.pi) * sig[..., 0])
    dens = (gy * ink[..., None]).transpose(1, 2) @ gx  # (N, H, W)
    # saturate like a pen: flat bright core, soft anti-aliased edge about a pixel wide
    img = (2.5 * dens).clamp(0, 1)
    images = (img * 255).round().to(torch.uint8)[:, None]  # (N, 1, 28, 28)

    factors = {
        "variant": variant,
        "thickness": thickness, "slant": slant, "aspect": aspect, "size": size,
        "distortion": distortion, "rotation": rotation,
    }  # fmt: skip
    return SynthSplit(
        images=images,
        labels=labels,
        factors=factors,
        categorical=("variant",),
        factor_levels={"variant": ("a", "b", "c")},
    )
