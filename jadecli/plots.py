"""Every figure of the analysis commands, written as a PNG without a display.

    plot_confusion        confusion matrix: rows = true class, columns = predicted class, colour =
                          fraction of the true class, cells annotated with counts, accuracy in title
    plot_latent_variance  which latent dims carry class information: (a) heatmap of the normalised
                          within-class variance per class and dim (plus a random-groups row),
                          (b) its mean over classes per dim next to the random-groups value,
                          (c) the activity of each dim (variance of the posterior mean, log scale)
    plot_probe            probe scores (accuracy or R²) of content vs style latents per factor,
                          with chance level marked
    save_image_grid       a labelled grid of images (reconstructions, samples, swap grids)

Only `matplotlib.figure.Figure` is used, never `pyplot`: no global figure registry, no backend to
select, nothing to close, so plotting is safe in a headless process and in tests. Every file is
written through `atomic_write`, so a crash never leaves a half-written PNG behind.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jadecli.run import atomic_write

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
# Fixed colours per latent group so every figure of every run reads the same way.
GROUP_COLOURS = {"content": "tab:blue", "style": "tab:orange", "feature": "tab:green"}


def _save(fig: Figure, path: Path, tight: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw: dict = {"bbox_inches": "tight", "pad_inches": 0.1} if tight else {}
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, **kw)
    atomic_write(path, buf.getbuffer())


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


# -------------------------------------------------------------------------------- confusion


def plot_confusion(path: Path, matrix: np.ndarray, classes: list[str], title: str) -> None:
    """Confusion matrix heatmap: rows = true class, columns = predicted class, cells annotated
    with counts (when <= 30 classes), colour = row-normalised fraction; axis labels 'true' and
    'predicted'; the title plus overall accuracy (trace/sum, as %) in the title line."""
    m = np.asarray(matrix, dtype=float)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {m.shape}, expected ({k}, {k})")
    total = m.sum()
    acc = f"{100 * np.trace(m) / total:.1f}%" if total > 0 else "n/a"
    # colour by fraction of each true class, so rare classes are as readable as common ones
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)

    side = min(max(4.5, 0.45 * k + 2.5), 20.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    ticks = np.arange(k)
    rotate = 90 if k > 10 or max((len(c) for c in classes), default=0) > 4 else 0
    ax.set_xticks(ticks, classes, rotation=rotate, fontsize=8)
    ax.set_yticks(ticks, classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}  (accuracy {acc})")
    if k <= 30:
        size = 9 if k <= 10 else 6
        for i in range(k):
            for j in range(k):
                v = m[i, j]
                text = f"{int(v)}" if float(v).is_integer() else f"{v:.2g}"
                colour = "white" if frac[i, j] > 0.5 else "black"  # readable on dark cells
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)
    _save(fig, path)


# -------------------------------------------------------------------------- latent variance


def _blocks(groups: list[str]) -> list[tuple[str, int, int]]:
    """Contiguous runs of equal group names as (name, start, stop)."""
    out: list[tuple[str, int, int]] = []
    for i, g in enumerate(groups):
        if out and out[-1][0] == g:
            out[-1] = (g, out[-1][1], i + 1)
        else:
            out.append((g, i, i + 1))
    return out


def _group_lines(ax: Axes, blocks: list[tuple[str, int, int]]) -> None:
    for _, start, _ in blocks[1:]:
        ax.axvline(start - 0.5, color="black", lw=1.2, zorder=4)


def plot_latent_variance(
    path: Path,
    within: np.ndarray,
    random_groups: np.ndarray,
    activity: np.ndarray,
    dim_names: list[str],
    groups: list[str],
    classes: list[str],
    title: str,
    normalisation: str,
    active_threshold: float,
) -> None:
    """Three panels sharing the dimension axis (columns in the caller's order):
    (a) heatmap K x D of the normalised within-class variance `within` (NaN = inactive dim, grey)
        plus a last row 'random' from `random_groups`;
    (b) mean over classes of `within` per dim, coloured by group, with the random-groups value as
        a marker and a line at 1.0;
    (c) `activity` (variance of the posterior mean over all images) per dim on a log axis, with
        `active_threshold` as a dashed line.
    Groups are separated by vertical lines in every panel and named above panel (a); the
    `normalisation` sentence is printed at the bottom."""
    w = np.asarray(within, dtype=float)
    rnd = np.asarray(random_groups, dtype=float)
    act = np.asarray(activity, dtype=float)
    k, d = len(classes), len(dim_names)
    _check_variance_inputs(w, rnd, act, groups, k, d)
    blocks = _blocks(groups)
    colours = [GROUP_COLOURS[g] for g in groups]

    width = min(max(8.0, 0.26 * d + 3.0), 30.0)
    heat_h = min(0.22 * (k + 1) + 1.2, 8.0)
    fig = _new_figure(width, heat_h + 6.5)
    ax_a, ax_b, ax_c = fig.subplots(
        3, 1, sharex=True, gridspec_kw={"height_ratios": [heat_h, 2.6, 2.6]}
    )
    fig.suptitle(title)
    _variance_heatmap(fig, ax_a, w, rnd, classes, blocks)
    _variance_means(ax_b, w, rnd, colours, groups, blocks)
    _activity_bars(ax_c, act, colours, active_threshold, blocks)
    ax_c.set_xticks(np.arange(d), dim_names, rotation=90, fontsize=7)
    ax_c.set_xlim(-0.5, d - 0.5)
    for ax in (ax_a, ax_b, ax_c):
        ax.tick_params(labelsize=7)
    # supxlabel (unlike fig.text) is placed by the constrained layout, so it never overlaps ticks
    fig.supxlabel(textwrap.fill(normalisation, width=int(width * 14)), fontsize=8)
    _save(fig, path)


def _check_variance_inputs(
    w: np.ndarray, rnd: np.ndarray, act: np.ndarray, groups: list[str], k: int, d: int
) -> None:
    if w.shape != (k, d):
        raise ValueError(f"within has shape {w.shape}, expected ({k}, {d}) (classes x dims)")
    for name, arr in (("random_groups", rnd), ("activity", act)):
        if arr.shape != (d,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({d},)")
    if len(groups) != d:
        raise ValueError(f"groups has {len(groups)} entries, expected {d}")
    unknown = sorted(set(groups) - set(GROUP_COLOURS))
    if unknown:
        raise ValueError(f"unknown group names {unknown}; expected {sorted(GROUP_COLOURS)}")


def _variance_heatmap(
    fig: Figure,
    ax: Axes,
    w: np.ndarray,
    rnd: np.ndarray,
    classes: list[str],
    blocks: list[tuple[str, int, int]],
) -> None:
    """Panel (a); NaN (inactive dims) become masked cells drawn in the colormap's "bad" grey."""
    import matplotlib

    k = len(classes)
    data = np.vstack([w, rnd[None, :]])
    finite = data[np.isfinite(data)]
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(
        np.ma.masked_invalid(data),
        cmap=cmap,
        vmin=0.0,
        vmax=vmax,
        aspect="auto",
        interpolation="nearest",
    )
    label = "normalised variance\n(grey = inactive dim)" if np.isnan(data).any() else None
    fig.colorbar(im, ax=ax, label=label or "normalised variance", pad=0.01)
    ax.set_yticks(np.arange(k + 1), [*classes, "random"], fontsize=7)
    ax.axhline(k - 0.5, color="white", lw=2)  # set the random-groups row apart from the classes
    ax.set_title(
        "(a) same class: variance of each latent within one class / over all classes",
        fontsize=10,
        pad=16,
    )
    for name, start, stop in blocks:
        ax.annotate(
            name,
            xy=((start + stop - 1) / 2, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
            fontweight="bold",
            color=GROUP_COLOURS[name],
        )
    _group_lines(ax, blocks)


def _variance_means(
    ax: Axes,
    w: np.ndarray,
    rnd: np.ndarray,
    colours: list[str],
    groups: list[str],
    blocks: list[tuple[str, int, int]],
) -> None:
    """Panel (b): the mean over classes; an all-NaN column (inactive dim) has no bar rather
    than a warning."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    k, d = w.shape
    x = np.arange(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(w, axis=0) if k else np.full(d, np.nan)
    shown = np.isfinite(mean)
    ax.bar(x[shown], mean[shown], width=0.8, color=np.array(colours)[shown])
    ax.plot(x, rnd, ls="none", marker="D", ms=3.5, color="black", zorder=5)
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("normalised variance", fontsize=8)
    ax.set_title("(b) mean over classes of the within-class variance", fontsize=10)
    present = [g for g in GROUP_COLOURS if g in groups]
    handles = [Patch(color=GROUP_COLOURS[g], label=g) for g in present]
    handles += [
        Line2D([], [], ls="none", marker="D", ms=3.5, color="black", label="random groups"),
        Line2D([], [], ls=":", color="grey", label="1.0 = no class information"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    _group_lines(ax, blocks)


def _activity_bars(
    ax: Axes,
    act: np.ndarray,
    colours: list[str],
    active_threshold: float,
    blocks: list[tuple[str, int, int]],
) -> None:
    """Panel (c): activity on a log axis; values are floored so dead dims (variance ~0) still
    get a bar."""
    floor = 1e-6
    vals = np.clip(np.nan_to_num(act, nan=0.0), floor, None)
    thr = max(float(active_threshold), floor)
    # one decade below the smallest value, so a floored (dead) dim still shows a stub of a bar
    bottom = 10.0 ** (np.floor(np.log10(min(vals.min(initial=thr), thr))) - 1)
    alpha = np.where(vals < thr, 0.35, 1.0)  # fade inactive dims
    for xi, v, c, a in zip(np.arange(len(vals)), vals, colours, alpha, strict=True):
        ax.bar(xi, v - bottom, bottom=bottom, width=0.8, color=c, alpha=a)
    ax.axhline(thr, color="black", ls="--", lw=1, label=f"active threshold ({thr:g})")
    ax.set_yscale("log")
    ax.set_ylim(bottom, max(float(vals.max(initial=thr)), thr) * 3)
    ax.set_ylabel("variance", fontsize=8)
    ax.set_title("(c) activity: variance of the posterior mean over all images", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    _group_lines(ax, blocks)


# -------------------------------------------------------------------------------- probe


def plot_probe(path: Path, rows: list[dict[str, object]], title: str) -> None:
    """Grouped horizontal bars of probe scores, one group (content, style) per factor, chance
    marked where known; None scores are not drawn. The x-axis runs from min(0, lowest score) to 1,
    but never below -1 (a very negative R² would squash every other bar): lower bars are cut at
    the edge and their true value is written beside them."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _check_probe_rows(rows)
    scores = [s for r in rows for s in (_score(r["content"]), _score(r["style"])) if s is not None]
    lo = max(min([0.0, *scores]), -1.0)
    n = len(rows)
    fig = _new_figure(7.0, 0.7 * n + 1.6)
    ax = fig.add_subplot()
    height = 0.38
    for i, r in enumerate(rows):
        for key, offset in (("content", -height / 2), ("style", height / 2)):
            s = _score(r[key])
            if s is not None:
                _probe_bar(ax, i + offset, s, lo, height, GROUP_COLOURS[key])
        chance = _score(r["chance"])
        if chance is not None:
            ax.plot([chance, chance], [i - height, i + height], color="black", ls="--", lw=1.2)
    labels = [f"{r['factor']} ({'accuracy' if r['metric'] == 'accuracy' else 'R²'})" for r in rows]
    ax.set_yticks(np.arange(n), labels, fontsize=8)
    ax.invert_yaxis()  # first factor on top
    ax.set_xlim(lo, 1.0)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("score")
    ax.set_title(title)
    handles = [
        Patch(color=GROUP_COLOURS["content"], label="content latents"),
        Patch(color=GROUP_COLOURS["style"], label="style latents"),
        Line2D([], [], color="black", ls="--", lw=1.2, label="chance"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


def _check_probe_rows(rows: list[dict[str, object]]) -> None:
    """Fail with a clear message before drawing anything from rows plot_probe cannot read."""
    if not rows:
        raise ValueError("plot_probe needs at least one row")
    for r in rows:
        missing = {"factor", "metric", "content", "style", "chance"} - set(r)
        if missing:
            raise ValueError(f"probe row {r!r} lacks keys {sorted(missing)}")
        if r["metric"] not in ("accuracy", "r2"):
            raise ValueError(f"probe metric must be 'accuracy' or 'r2', got {r['metric']!r}")


def _score(v: object) -> float | None:
    """A probe row's score as a float; None (no score) stays None."""
    return None if v is None else float(v)  # type: ignore[arg-type]


def _probe_bar(ax: Axes, y: float, score: float, lo: float, height: float, colour: str) -> None:
    """One probe score's bar, cut at the axis' left edge `lo`, with its true value written
    beside the bar's end, or inside it when it would run past the right edge."""
    shown = max(score, lo)
    ax.barh(y, shown, height=height * 0.95, color=colour)
    inside = shown > 0.85
    ax.text(
        shown - 0.01 if inside else max(shown, 0.0) + 0.01,
        y,
        f"{score:.2f}",
        ha="right" if inside else "left",
        va="center",
        fontsize=7,
        color="white" if inside else "black",
    )


# ------------------------------------------------------------------------------- image grid


def save_image_grid(
    path: Path,
    images: np.ndarray,
    title: str,
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    blank: np.ndarray | None = None,
    scale: int = 2,
) -> None:
    """A labelled grid of images, `images` (R, Cc, H, W, 3) or (R, Cc, H, W) in [0, 1]: cells
    upscaled `scale` times (nearest), separated by a 2-pixel white gutter, grayscale shown as gray,
    `blank` (R, Cc) cells left empty, row labels on the left, column labels on top, no frame."""
    imgs = _grid_cells(images)  # (R, Cc, H, W, 3)
    n_rows, n_cols, h, w, _ = imgs.shape
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")
    if blank is not None and np.shape(blank) != (n_rows, n_cols):
        raise ValueError(f"blank has shape {np.shape(blank)}, expected ({n_rows}, {n_cols})")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    canvas = _compose_grid(imgs, blank, scale)

    # The axes is exactly the canvas size in pixels; labels and title sit outside it and
    # bbox_inches="tight" grows the saved image to hold them.
    from matplotlib.figure import Figure

    ph, pw = canvas.shape[:2]
    fig = Figure(figsize=(pw / DPI, ph / DPI), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, interpolation="nearest", extent=(0, pw, ph, 0))
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0, labelsize=7, pad=3)
    ax.xaxis.tick_top()
    _label_grid(ax, row_labels, col_labels, h * scale, w * scale)
    ax.set_title(title, fontsize=9)  # placed above the top tick labels automatically
    _save(fig, path, tight=True)


GRID_GUTTER = 2  # pixels of white between the cells of an image grid


def _grid_cells(images: np.ndarray) -> np.ndarray:
    """save_image_grid's images as floats (R, Cc, H, W, 3), grayscale repeated into RGB."""
    imgs = np.asarray(images, dtype=float)
    if imgs.ndim == 4:
        imgs = np.repeat(imgs[..., None], 3, axis=-1)  # gray as gray, not through a colormap
    if imgs.ndim != 5 or imgs.shape[-1] != 3:
        raise ValueError(f"images must be (R, C, H, W) or (R, C, H, W, 3), got {images.shape}")
    return imgs


def _compose_grid(imgs: np.ndarray, blank: np.ndarray | None, scale: int) -> np.ndarray:
    """The grid as one RGB canvas, composed in numpy so that each image pixel becomes exactly
    scale x scale screen pixels: cells (R, Cc, H, W, 3) on white, `blank` cells left white."""
    n_rows, n_cols, h, w, _ = imgs.shape
    ch, cw = h * scale, w * scale
    canvas = np.ones(
        (n_rows * (ch + GRID_GUTTER) - GRID_GUTTER, n_cols * (cw + GRID_GUTTER) - GRID_GUTTER, 3)
    )
    cells = np.clip(np.nan_to_num(imgs, nan=0.0), 0.0, 1.0)
    for i in range(n_rows):
        for j in range(n_cols):
            if blank is not None and blank[i, j]:
                continue
            y0, x0 = i * (ch + GRID_GUTTER), j * (cw + GRID_GUTTER)
            canvas[y0 : y0 + ch, x0 : x0 + cw] = cells[i, j].repeat(scale, 0).repeat(scale, 1)
    return canvas


def _label_grid(
    ax: Axes, row_labels: list[str] | None, col_labels: list[str] | None, ch: int, cw: int
) -> None:
    """Column labels over the centres of the cells (ch x cw pixels), rotated 90 degrees when
    one is too wide for a cell, row labels to their left; no ticks where there are no labels."""
    if col_labels is not None:
        rotate = 90 if max((len(c) for c in col_labels), default=0) * 5 > cw else 0
        ax.set_xticks([j * (cw + GRID_GUTTER) + cw / 2 for j in range(len(col_labels))], col_labels)
        ax.tick_params(axis="x", labelrotation=rotate)
    else:
        ax.set_xticks([])
    if row_labels is not None:
        ax.set_yticks([i * (ch + GRID_GUTTER) + ch / 2 for i in range(len(row_labels))], row_labels)
    else:
        ax.set_yticks([])


def to_display(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> (N, H', W', 3) numpy at a common display size
    (what every image grid draws: grey as 3 equal channels, sizes resized to one)."""
    import torch.nn.functional as F

    x = x.float().cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
    return x.permute(0, 2, 3, 1).numpy()
