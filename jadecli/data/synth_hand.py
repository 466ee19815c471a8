"""The ``hand`` synthetic dataset: MNIST-like digits drawn with a pen along distorted skeletons.

See `jadecli.data.synthetic` for what the images look like; this module draws them. The
skeleton tables are built on the first call, not at import.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from jadecli.data.synth_common import (
    SynthSplit,
    balanced_labels,
    check_n,
    diag_matrix,
    log_uniform,
    rotation_matrix,
    shear_x_matrix,
    uniform,
)

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


# The factors of a hand image, in the order SynthSplit records them.
_HAND_FACTORS = ("variant", "thickness", "slant", "aspect", "size", "distortion", "rotation")


def generate_hand(n: int, seed: int) -> SynthSplit:
    """MNIST-like handwritten digits: uint8 images (n, 1, 28, 28), balanced labels 0..9.

    Factors (continuous unless noted): variant (categorical, which of the three pen
    skeletons of the digit, "a"/"b"/"c"), thickness (pen radius: the Gaussian sigma of the
    stroke profile, in pixels), slant (x shift per unit y, positive leans right), aspect
    (width stretch before size normalisation), size (side of the box the digit is fitted
    into, in pixels; MNIST uses 20), distortion (amplitude of the smooth random warp and the
    point jitter), rotation (degrees, clockwise).
    """
    check_n(n)
    points, weights, valid = _hand_tables()  # (V, Q, 2), (V, B*4, Q), (V, B)
    g = torch.Generator().manual_seed(seed)
    f = _hand_factors(n, g, points.shape[1])
    vid = f["labels"] * HAND_VARIANTS + f["variant"]  # (N,) each image's skeleton
    curve = _pen_path(f, points[vid], weights[vid])  # (N, B, S+1, 2)
    mid, length = _ink_pieces(curve, valid[vid])  # (N, M, 2), (N, M)
    mid, ink = _fit_to_frame(mid, length, f["size"], f["thickness"])
    return SynthSplit(
        images=_render_hand(mid, ink, f["thickness"]),
        labels=f["labels"],
        factors={name: f[name] for name in _HAND_FACTORS},
        categorical=("variant",),
        factor_levels={"variant": ("a", "b", "c")},
    )


def _hand_factors(n: int, g: torch.Generator, n_points: int) -> dict[str, torch.Tensor]:
    """Everything about each hand image, sampled up front and independently of the label
    (the draw order is part of the dataset: changing it changes every image)."""
    f: dict[str, torch.Tensor] = {"labels": balanced_labels(n, g)}
    f["variant"] = torch.randint(HAND_VARIANTS, (n,), generator=g)
    f["thickness"] = uniform(g, n, 0.65, 1.1)
    f["slant"] = uniform(g, n, -0.15, 0.4)  # people lean right far more often than left
    f["aspect"] = log_uniform(g, n, 0.8, 1.35)
    f["size"] = uniform(g, n, 18.0, 20.0)
    f["distortion"] = uniform(g, n, 0.0, 1.0)
    f["rotation"] = uniform(g, n, -12.0, 12.0)
    f["coef"] = torch.randn(n, 2, 6, generator=g)  # the smooth warp, see _field
    f["jitter"] = torch.randn(n, n_points, 2, generator=g)  # per skeleton point
    return f


def _pen_path(
    f: dict[str, torch.Tensor], points: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The pen's path (N, B, S+1, 2) about the box centre, from each image's skeleton points
    (N, Q, 2) and Bezier map (N, B*4, Q): distorted, smoothed, then given the pen's style."""
    n = len(points)
    amp = f["distortion"][:, None, None]
    pts = points + amp * (0.07 * _field(points, f["coef"]) + 0.035 * f["jitter"])  # (N, Q, 2)
    ctrl = (weights @ pts).reshape(n, -1, 4, 2)  # (N, B, 4, 2)
    t = torch.linspace(0, 1, _BEZIER_STEPS + 1)[:, None]
    bern = torch.cat([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], 1)
    curve = torch.einsum("tk,nbkd->nbtd", bern, ctrl)  # (N, B, S+1, 2)
    # affine pen style about the box centre: stretch, slant, rotate
    stretch = diag_matrix(_HAND_WIDTH * f["aspect"], torch.ones(n))
    lin = rotation_matrix(f["rotation"]) @ shear_x_matrix(f["slant"]) @ stretch
    return torch.einsum("nij,nbtj->nbti", lin, curve - 0.5)


def _ink_pieces(curve: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ink as short line pieces between consecutive samples of the path (N, B, S+1, 2):
    their midpoints (N, M, 2) and lengths (N, M), 0 for the padding pieces (`valid` (N, B))."""
    n = len(curve)
    mid = (curve[:, :, 1:] + curve[:, :, :-1]) / 2  # (N, B, S, 2)
    length = (curve[:, :, 1:] - curve[:, :, :-1]).norm(dim=-1)  # (N, B, S)
    length = length * valid[..., None]  # padding pieces carry no ink
    return mid.reshape(n, -1, 2), length.reshape(n, -1)  # (N, M, 2), (N, M)


def _fit_to_frame(
    mid: torch.Tensor, length: torch.Tensor, size: torch.Tensor, thickness: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's normalisation: fit the inked box into size x size pixels, then put the centre
    of mass at the frame centre (here: of the skeleton, which is the ink up to the caps).
    Returns the pieces' midpoints in pixel coordinates (N, M, 2) and their ink (N, M), in
    pixels of stroke length."""
    on = (length > 0)[..., None]
    lo = torch.where(on, mid, torch.full_like(mid, math.inf)).amin(1)  # (N, 2)
    hi = torch.where(on, mid, torch.full_like(mid, -math.inf)).amax(1)
    extent = (hi - lo).amax(1)  # (N,)
    px = (size - 4 * thickness) / extent  # pixels per unit, ink reaches ~2 sigma past it
    com = (mid * length[..., None]).sum(1) / length.sum(1, keepdim=True)  # (N, 2)
    mid = (mid - com[:, None]) * px[:, None, None] + _HAND_SIZE / 2  # pixel coordinates
    return mid, length * px[:, None]


def _render_hand(mid: torch.Tensor, ink: torch.Tensor, thickness: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 1, 28, 28) from the ink pieces: a sum of Gaussian pen dabs is
    separable, so one batched matmul renders them all."""
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
    return (img * 255).round().to(torch.uint8)[:, None]  # (N, 1, 28, 28)
