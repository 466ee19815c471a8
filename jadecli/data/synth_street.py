"""The ``street`` synthetic dataset: SVHN-like colour crops rendered from matplotlib's fonts.

See `jadecli.data.synthetic` for what the images look like; this module draws them. The glyph
atlas is rendered on the first call, not at import, so importing costs no matplotlib.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from jadecli.data.synth_common import (
    SynthSplit,
    balanced_labels,
    blur,
    check_n,
    diag_matrix,
    log_uniform,
    pixel_grid,
    position_along,
    rotation_matrix,
    shear_x_matrix,
    uniform,
)

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
    check_n(n)
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
    f: dict[str, torch.Tensor] = {"labels": balanced_labels(n, g)}
    f["font"] = torch.randint(len(STREET_FONTS), (n,), generator=g)
    f["fg"], f["bg"] = _contrasting_colours(g, n, min_contrast=0.3)  # (N, 3) each
    f["rotation"] = uniform(g, n, -12.0, 12.0)
    f["scale"] = uniform(g, n, 0.55, 0.85)
    f["aspect"] = log_uniform(g, n, 0.75, 1.3)
    f["shear"] = uniform(g, n, -0.15, 0.15)
    f["shift_x"] = uniform(g, n, -2.5, 2.5)
    f["shift_y"] = uniform(g, n, -2.0, 2.0)
    f["gap"] = uniform(g, n, 0.05, 0.3)
    f["left"] = (torch.rand(n, generator=g) < 0.6).long()  # SVHN crops of multi-digit numbers
    f["right"] = (torch.rand(n, generator=g) < 0.6).long()
    f["left_digit"] = torch.randint(10, (n,), generator=g)  # neighbours: any digit, same font
    f["right_digit"] = torch.randint(10, (n,), generator=g)
    f["light"] = uniform(g, n, 0.0, 0.4)
    f["light_angle"] = uniform(g, n, -180.0, 180.0)
    f["texture"] = uniform(g, n, 0.0, 0.25)
    f["edge"] = uniform(g, n, -0.4, 0.4)  # a sign border or shadow line crossing the background
    f["edge_angle"] = uniform(g, n, -180.0, 180.0)
    f["edge_offset"] = uniform(g, n, 0.4, 1.0)  # its distance from the centre, in half-widths
    f["blur"] = uniform(g, n, 0.3, 1.1)
    f["noise"] = uniform(g, n, 0.0, 0.05)
    return f


def _street_geometry(f: dict[str, torch.Tensor], widths: torch.Tensor) -> dict[str, torch.Tensor]:
    """The inverse affine map from output pixels to centre-glyph tile coordinates, and where
    the neighbours sit. Forward is tile -> R @ Shear @ diag(k * aspect, k) @ tile + t, with k
    the tile-unit to output-unit ratio that makes the digit `scale` of the image height."""
    k = 2 * f["scale"] / _GLYPH_H
    fwd = (
        rotation_matrix(f["rotation"])
        @ shear_x_matrix(f["shear"])
        @ diag_matrix(k * f["aspect"], k)
    )
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
    grid = pixel_grid(_STREET_SIZE)  # (P, 2)
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
    along = position_along(f["edge_angle"][sl], xy) - per_image("edge_offset")
    step = torch.sigmoid(along * 12)  # (m, 1, H, W), a soft step a few pixels wide
    shade = 1 + per_image("texture") * tex + per_image("edge") * step
    img = torch.lerp(f["bg"][sl, :, None, None] * shade, f["fg"][sl, :, None, None], alpha)
    # a linear lighting gradient over the whole crop (sign, shade, digits alike)
    img = img * (1 + per_image("light") * position_along(f["light_angle"][sl], xy))
    img = blur(img, f["blur"][sl])
    img = img + per_image("noise") * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)
