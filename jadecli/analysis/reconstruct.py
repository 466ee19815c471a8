"""`jade reconstruct RUN`: what do a JADE run's decoders see?

- reconstructions.png: test images and their reconstructions from the posterior means.
- swap_*.png: style/content swaps (the paper's future work): cell (i, j) decodes the content
  latents of image j (top row) with the style latents of image i (left column). Within each
  dataset, and across datasets: auxiliary content rendered in primary style through the primary
  decoder (MNIST digits drawn as SVHN crops), and the reverse.
- traverse_*.png (`--traverse`): one latent dimension varied over +-R standard deviations (its
  spread over the split) while the others stay at one image's posterior mean.

Every grid has a CSV twin with numbers: each generated image is classified by the model itself
(decoded image -> its dataset's encoder -> classifier on mu_c), so `swaps.csv` says how often a
swap keeps the content image's class and `traverse_*.csv` how often moving one dimension changes
the predicted class.

    jade reconstruct runs/quickstart --n 8 --traverse all
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jadecli.analysis.common import (
    LoadedRun,
    open_run,
    output_dir,
    publish,
    write_csv,
)
from jadecli.compute import to_input
from jadecli.config import ConfigError, ReconstructConfig
from jadecli.data.core import ImageSet
from jadecli.generative import (
    SWAPS,
    Picked,
    agreement,
    classify,
    pick,
    reconstructions,
    swap_scores,
    swaps,
)
from jadecli.model import JADE
from jadecli.objective import reconstruction_bce
from jadecli.plots import to_display
from jadecli.progress import Reporter
from jadecli.spec import ModelSpec

SPREAD_IMAGES = 2000  # images used to measure each dimension's spread for --traverse


def parse_dims(spec: str, content_dim: int, style_dim: int) -> list[tuple[str, int]]:
    """`all`, `content`, `style` or a comma list (`content_3,style_0`, short `c3,s0`)."""
    everything = [("content", i) for i in range(content_dim)] + [
        ("style", i) for i in range(style_dim)
    ]
    wanted: list[tuple[str, int]] = []
    for item in (p.strip() for p in spec.split(",")):
        if item == "all":
            wanted += everything
        elif item in ("content", "style"):
            wanted += [d for d in everything if d[0] == item]
        else:
            m = re.fullmatch(r"(content|style|c|s)_?(\d+)", item)
            if not m:
                raise ConfigError(
                    "traverse",
                    f"{item!r} is not a dimension; use all, content, style or names like "
                    "content_3, style_0 (short: c3, s0)",
                )
            group = "content" if m.group(1).startswith("c") else "style"
            index, size = int(m.group(2)), content_dim if group == "content" else style_dim
            if index >= size:
                raise ConfigError(
                    "traverse", f"{item!r}: this run has {size} {group} dimensions (0-{size - 1})"
                )
            wanted.append((group, index))
    return list(dict.fromkeys(wanted))  # keep order, drop repeats


@dataclass
class ReconstructResult:
    report: dict[str, Any]
    out_dir: Path
    files: list[Path]


def reconstruct(cfg: ReconstructConfig, reporter: Reporter) -> ReconstructResult:
    dims: list[tuple[str, int]] = []

    def check(spec: ModelSpec) -> None:
        if cfg.traverse:
            dims.extend(parse_dims(cfg.traverse, spec.content_dim, spec.style_dim))

    loaded = open_run(cfg, reporter, need_decoder="reconstruct", check_spec=check)
    model = loaded.model
    assert isinstance(model, JADE)
    t0 = time.perf_counter()
    picked: dict[str, Picked] = {}
    for role in ("primary", "auxiliary"):
        part = loaded.images(role, cfg.split)
        if part is None:
            hint = {  # what to use instead (an empty test split has no other split to offer)
                "train-unlabeled": " (the run trained on all its training images); use --split "
                "test",
                "test": "",
            }.get(cfg.split, "; use --split test")
            raise ConfigError("split", f"{cfg.split}: the {role} dataset has no such images{hint}")
        with loaded.autocast():
            picked[role] = pick(model, role, part, cfg.n, cfg.seed, loaded.device)

    out = output_dir(loaded, "reconstruct", cfg.split, suffix=f"-seed{cfg.seed}")
    files: list[Path] = []
    summary: dict[str, Any] = {}
    with loaded.autocast():  # the run's precision for every forward pass; outputs are fp32
        files += _reconstructions(out, loaded, picked, summary)
        files += _swaps(out, loaded, picked, summary)
        if dims:
            for role in ("primary", "auxiliary"):
                part = loaded.images(role, cfg.split, SPREAD_IMAGES)
                assert part is not None
                files += _traverse(out, loaded, picked[role], part, dims, cfg, summary)
    seconds = time.perf_counter() - t0
    body = {"n": cfg.n, "seed": cfg.seed, "seconds": round(seconds, 3), **summary}
    entry = {
        "n": cfg.n,
        "seed": cfg.seed,
        "traverse": cfg.traverse,
        "swap_content_kept": {k: v["content_kept"] for k, v in summary["swaps"].items()},
    }
    report, files = publish(loaded, "reconstruct", cfg.split, out, body, files, entry, reporter)
    return ReconstructResult(report, out, files)


# --------------------------------------------------------------------------- helpers


def _name(loaded: LoadedRun, role: str, label: int) -> str:
    return loaded.datasets[role].classes[int(label)]


def _reconstructions(
    out: Path, loaded: LoadedRun, picked: dict[str, Picked], summary: dict[str, Any]
) -> list[Path]:
    from jadecli import plots

    model = loaded.model
    assert isinstance(model, JADE)
    size = _common_size(loaded)
    rows, labels, csv_rows = [], [], []
    summary["reconstruction"] = {}
    for role, p in picked.items():
        recon, pred_r = reconstructions(model, p)  # decoded from the posterior means
        with torch.inference_mode():
            bce = reconstruction_bce(torch.logit(recon.clamp(1e-6, 1 - 1e-6)), p.x).cpu()
            mse = (recon - p.x).pow(2).flatten(1).mean(1).cpu()
        pred_x = p.predicted  # the model's class of each original
        rows += [to_display(p.x, size), to_display(recon, size)]
        name = loaded.datasets[role].name
        labels += [f"{role} ({name})", "reconstruction"]
        for i in range(len(p.index)):
            csv_rows.append(
                [
                    role,
                    int(p.index[i]),
                    _name(loaded, role, p.part.labels[i]),
                    _name(loaded, role, pred_x[i]),
                    _name(loaded, role, pred_r[i]),
                    float(bce[i]),
                    float(mse[i]),
                ]
            )
        summary["reconstruction"][role] = {
            "mean_bce": float(bce.mean()),
            "mean_mse": float(mse.mean()),
            "class_kept": agreement(pred_r, p.part.labels),
            "prediction_kept": agreement(pred_r, p.predicted),
        }
    n = min(len(p.index) for p in picked.values())
    grid = np.stack([r[:n] for r in rows])  # (4, n, H, W, 3)
    png = out / "reconstructions.png"
    plots.save_image_grid(
        png,
        grid,
        "originals and reconstructions (decoded posterior means)",
        row_labels=labels,
        col_labels=_column_labels(loaded, picked, n),
    )
    csv_path = out / "reconstructions.csv"
    write_csv(
        csv_path,
        ["role", "index", "class", "predicted", "predicted_from_reconstruction", "bce", "mse"],
        csv_rows,
    )
    return [png, csv_path]


def _common_size(loaded: LoadedRun) -> tuple[int, int]:
    shapes = [loaded.datasets[r].image_shape for r in loaded.datasets]
    return max(s[1] for s in shapes), max(s[2] for s in shapes)


def _column_labels(loaded: LoadedRun, picked: dict[str, Picked], n: int) -> list[str]:
    p, a = picked["primary"], picked["auxiliary"]
    out = []
    for i in range(n):
        cp = _name(loaded, "primary", p.part.labels[i])
        ca = _name(loaded, "auxiliary", a.part.labels[i])
        out.append(cp if cp == ca else f"{cp}/{ca}")
    return out


def _swaps(
    out: Path, loaded: LoadedRun, picked: dict[str, Picked], summary: dict[str, Any]
) -> list[Path]:
    model = loaded.model
    assert isinstance(model, JADE)
    files: list[Path] = []
    csv_rows: list[list[Any]] = []
    summary["swaps"] = {}
    for swap in SWAPS:
        name, c_role, s_role, d_role = swap
        content, style = picked[c_role], picked[s_role]
        images, pred = swaps(model, d_role, content, style)  # (ns * nc, ...), (ns, nc)
        c_names = [_name(loaded, c_role, y) for y in content.part.labels]
        s_names = [_name(loaded, s_role, y) for y in style.part.labels]
        files.append(_plot_swaps(out, loaded, swap, content, style, images, c_names, s_names))
        p_names = [[_name(loaded, d_role, y) for y in row] for row in pred]  # (ns, nc)
        csv_rows += _swap_rows(name, content, style, c_names, s_names, p_names)
        kept, style_class = swap_scores(content.part.labels, style.part.labels, pred)
        summary["swaps"][name] = {
            "content_from": c_role,
            "style_from": s_role,
            "decoder": d_role,
            "content_kept": kept,
            "content_prediction_kept": swap_scores(content.predicted, style.predicted, pred)[0],
            "style_class": style_class,
        }
    csv_path = out / "swaps.csv"
    write_csv(
        csv_path,
        [
            "grid",
            "style_index",
            "style_class",
            "content_index",
            "content_class",
            "predicted",
            "content_kept",
        ],
        csv_rows,
    )
    files.append(csv_path)
    return files


def _plot_swaps(
    out: Path,
    loaded: LoadedRun,
    swap: tuple[str, str, str, str],
    content: Picked,
    style: Picked,
    images: torch.Tensor,
    c_names: list[str],
    s_names: list[str],
) -> Path:
    """swap_NAME.png: the content images along the top, the style images down the left and
    the decoded combinations (ns * nc, C, H, W) between them."""
    from jadecli import plots

    name, c_role, s_role, d_role = swap
    nc, ns = len(content.index), len(style.index)
    shape = loaded.datasets[d_role].image_shape
    size = (shape[1], shape[2])
    cells = np.ones((ns + 1, nc + 1, *size, 3), dtype=np.float32)
    cells[0, 1:] = to_display(content.x, size)
    cells[1:, 0] = to_display(style.x, size)
    cells[1:, 1:] = to_display(images, size).reshape(ns, nc, *size, 3)
    blank = np.zeros((ns + 1, nc + 1), dtype=bool)
    blank[0, 0] = True  # the corner is neither a content nor a style image
    png = out / f"swap_{name}.png"
    title = (
        f"content of the top row ({c_role}) with the style of the left column ({s_role}), "
        f"decoded by the {d_role} decoder"
    )
    plots.save_image_grid(
        png,
        cells,
        title,
        row_labels=["content ->", *[f"style: {s}" for s in s_names]],
        col_labels=["", *c_names],
        blank=blank,
    )
    return png


def _swap_rows(
    name: str,
    content: Picked,
    style: Picked,
    c_names: list[str],
    s_names: list[str],
    p_names: list[list[str]],
) -> list[list[Any]]:
    """swaps.csv's rows of one grid: a row per decoded image, style-major like the grid."""
    rows: list[list[Any]] = []
    for i in range(len(s_names)):
        for j in range(len(c_names)):
            rows.append(
                [
                    name,
                    int(style.index[i]),
                    s_names[i],
                    int(content.index[j]),
                    c_names[j],
                    p_names[i][j],
                    int(p_names[i][j] == c_names[j]),
                ]
            )
    return rows


@torch.inference_mode()
def _traverse(
    out: Path,
    loaded: LoadedRun,
    p: Picked,
    spread_part: ImageSet,
    dims: list[tuple[str, int]],
    cfg: ReconstructConfig,
    summary: dict[str, Any],
) -> list[Path]:
    from jadecli import plots

    model = loaded.model
    assert isinstance(model, JADE)
    role = p.role
    std = _spread(loaded, model, role, spread_part)  # group -> (dim,)
    offsets = torch.linspace(-cfg.traverse_range, cfg.traverse_range, cfg.traverse_steps)
    z_s, z_c, values = _traversal_latents(p, dims, offsets, std)
    images = model.decode(role, z_s, z_c)  # (dims * steps, C, H, W)
    pred = classify(model, role, images).view(len(dims), len(offsets))
    base_pred = int(classify(model, role, p.x[:1])[0])
    shape = loaded.datasets[role].image_shape
    size = (shape[1], shape[2])
    cells = to_display(images, size).reshape(len(dims), len(offsets), *size, 3)
    png = out / f"traverse_{role}.png"
    label = _name(loaded, role, p.part.labels[0])
    plots.save_image_grid(
        png,
        cells,
        f"{role} image #{int(p.index[0])} (class {label}): one latent at a time, offsets in "
        "standard deviations over the split",
        row_labels=[f"{g}_{d}" for g, d in dims],
        col_labels=[f"{o:+.1f} sd" for o in offsets.tolist()],
    )
    csv_rows, changed = _traverse_rows(loaded, role, dims, offsets, values, pred, base_pred)
    csv_path = out / f"traverse_{role}.csv"
    write_csv(
        csv_path,
        ["dim", "group", "offset_sd", "value", "predicted", "class_changed"],
        csv_rows,
    )
    summary.setdefault("traverse", {})[role] = {
        "image_index": int(p.index[0]),
        "class": label,
        "predicted": _name(loaded, role, base_pred),
        "class_changed": {g: (sum(v) / len(v) if v else None) for g, v in changed.items()},
    }
    return [png, csv_path]


@torch.inference_mode()
def _spread(
    loaded: LoadedRun, model: JADE, role: str, spread_part: ImageSet
) -> dict[str, torch.Tensor]:
    """Each dimension's spread, the unit of a traversal's offsets: the std of its posterior
    mean over (up to 2,000 of) the split's images, per group (content, style)."""
    enc = model.encoder(role)
    mus_s, mus_c = [], []
    for start in range(0, len(spread_part), loaded.source.batch_size):
        x = spread_part.images[start : start + loaded.source.batch_size]
        q = enc(to_input(x, loaded.device)).float()
        mus_s.append(q.mu_s)
        mus_c.append(q.mu_c)
    return {"style": torch.cat(mus_s).std(0), "content": torch.cat(mus_c).std(0)}


def _traversal_latents(
    p: Picked, dims: list[tuple[str, int]], offsets: torch.Tensor, std: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The first picked image's latents, once per (dim, offset): rows r * steps onwards move
    dims[r] by the offsets times its spread. Returns z_s, z_c and each dim's values (steps,)."""
    base_s, base_c = p.mu_s[:1], p.mu_c[:1]  # the first picked image
    z_s = base_s.repeat(len(dims) * len(offsets), 1)  # (dims * steps, style_dim)
    z_c = base_c.repeat(len(dims) * len(offsets), 1)  # (dims * steps, content_dim)
    values = []
    for r, (group, d) in enumerate(dims):
        rows = slice(r * len(offsets), (r + 1) * len(offsets))
        base = (base_c if group == "content" else base_s)[0, d]
        vals = base + offsets.to(base.device) * std[group][d]
        (z_c if group == "content" else z_s)[rows, d] = vals
        values.append(vals.cpu())
    return z_s, z_c, values


def _traverse_rows(
    loaded: LoadedRun,
    role: str,
    dims: list[tuple[str, int]],
    offsets: torch.Tensor,
    values: list[torch.Tensor],
    pred: torch.Tensor,
    base_pred: int,
) -> tuple[list[list[Any]], dict[str, list[int]]]:
    """traverse_ROLE.csv's rows, one per (dim, offset), and per group whether each step
    changed the predicted class (pred (dims, steps) against the image's own base_pred)."""
    csv_rows = []
    changed: dict[str, list[int]] = {"content": [], "style": []}
    for r, (group, d) in enumerate(dims):
        for s in range(len(offsets)):
            pc = int(pred[r, s])
            changed[group].append(int(pc != base_pred))
            csv_rows.append(
                [
                    f"{group}_{d}",
                    group,
                    float(offsets[s]),
                    float(values[r][s]),
                    _name(loaded, role, pc),
                    int(pc != base_pred),
                ]
            )
    return csv_rows, changed
