"""`jade inspect-latents RUN`: did the run disentangle content from style? (Figure 2, measured.)

Encode one split of the primary (and/or auxiliary) dataset and, for every latent dimension d
and class k, compute the normalised within-class variance of the posterior means

    v[k, d] = Var_{x in class k}(mu_d(x)) / Var_{x in all classes}(mu_d(x))

(population variances over the chosen split). v = 1: the dimension varies as much inside one
class as over all images (style-like); v near 0: it is nearly constant inside a class
(content-like). The same statistic over random groups of images, of the median class size, is the
paper's Fig. 2b view (all dimensions active: v ~ 1 everywhere). One number to track across runs:

    disentanglement ratio = mean v over (class, active style dim) / mean v over (class, active
                            content dim)

higher = more disentangled. A dimension is active when the variance of its posterior mean over
all images is at least 0.01 (Burda et al. 2016); inactive ones have collapsed to the prior, carry
nothing, and are left out of the ratio.

Probes (held-out): the split is cut in two halves (seeded); a linear probe fit on one half
predicts, on the other, the class and every known style factor (the built-in synth-* datasets
record font, colours, rotation, ...) from the content dims and, separately, from the style dims:
a softmax classifier (accuracy, with the majority-class rate as chance) for categorical targets,
ridge regression (R^2, chance 0) for continuous ones.

Single and paired runs have no style latents: their 10-d bottleneck features are shown instead,
and the ratio is not defined.

    jade inspect-latents runs/quickstart --dataset both
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jadecli.analysis.common import (
    LoadedRun,
    encode,
    open_run,
    output_dir,
    publish,
    write_csv,
)
from jadecli.config import ConfigError, LatentsConfig
from jadecli.data.sampling import derive_seed
from jadecli.errors import UsageError
from jadecli.progress import Reporter

ACTIVE_THRESHOLD = 0.01
RANDOM_GROUPS = 50
MIN_PROBE_IMAGES = 20
NORMALISATION = (
    "v[class, dim] = Var over images of that class of the posterior mean of dim / Var over all "
    "images of the split (population variances); 1 = varies as much within a class as overall"
)


@dataclass
class RoleLatents:
    """The variance statistics (and probes) of one dataset's latents."""

    role: str
    dataset: str
    images: int
    dim_names: list[str]
    groups: list[str]  # per dim: content | style | feature
    classes: list[str]
    class_sizes: list[int]
    within: torch.Tensor  # (K, D) normalised within-class variance, NaN = inactive / < 2 images
    random_groups: torch.Tensor  # (D,)
    activity: torch.Tensor  # (D,) variance of the posterior mean over all images
    active: torch.Tensor  # (D,) bool
    summary: dict[str, Any]
    probe: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class LatentsResult:
    report: dict[str, Any]
    roles: list[RoleLatents]
    out_dir: Path
    files: list[Path]


def inspect_latents(cfg: LatentsConfig, reporter: Reporter) -> LatentsResult:
    loaded = open_run(cfg, reporter)
    roles = ["primary", "auxiliary"] if cfg.dataset == "both" else [cfg.dataset]
    if "auxiliary" in roles and "auxiliary" not in loaded.datasets:
        raise UsageError(
            f"--dataset {cfg.dataset}: {loaded.run.path} is a single-classifier run; it has no "
            "auxiliary dataset (use --dataset primary)"
        )
    t0 = time.perf_counter()
    results: list[RoleLatents] = []
    for role in roles:
        part = loaded.images(role, cfg.split, cfg.test_limit)
        if part is None or len(part) < 2:
            raise ConfigError("split", f"{cfg.split}: the {role} dataset has too few images")
        codes = encode(loaded, role, part.images)
        results.append(_analyse(loaded, role, codes, part.labels, part.factors, cfg))
    seconds = time.perf_counter() - t0

    out = output_dir(loaded, "latents", cfg.split, cfg.test_limit)
    files: list[Path] = []
    for r in results:
        files += _write_role(out, r, loaded)
    body = {
        "limit": cfg.test_limit,
        "normalisation": NORMALISATION,
        "active_threshold": ACTIVE_THRESHOLD,
        "seconds": round(seconds, 3),
        **{r.role: {**r.summary, "probe": r.probe, "notes": r.notes} for r in results},
    }
    keys = ("disentanglement_ratio", "content_within", "style_within", "active_content")
    entry: dict[str, Any] = {"limit": cfg.test_limit}
    for r in results:
        entry[r.role] = {k: r.summary[k] for k in (*keys, "active_style")}
    report, files = publish(loaded, "inspect-latents", cfg.split, out, body, files, entry, reporter)
    return LatentsResult(report, results, out, files)


def _analyse(
    loaded: LoadedRun,
    role: str,
    codes: dict[str, torch.Tensor],
    labels: torch.Tensor,
    factors: dict[str, torch.Tensor],
    cfg: LatentsConfig,
) -> RoleLatents:
    ds = loaded.datasets[role]
    notes: list[str] = []
    z, names, groups = _latent_columns(loaded, codes, notes)  # (N, D), D names, D groups
    # VAE latents live on the prior's scale, so 0.01 is meaningful; bottleneck features have no
    # fixed scale: there, only a constant feature is inactive.
    threshold = ACTIVE_THRESHOLD if loaded.spec.generative else 1e-12
    prof = variance_profile(z, labels, loaded.spec.num_classes, threshold, cfg.seed, role)
    result = RoleLatents(
        role=role,
        dataset=ds.name,
        images=len(z),
        dim_names=names,
        groups=groups,
        classes=list(ds.classes),
        class_sizes=prof.class_sizes.tolist(),
        within=prof.within,
        random_groups=prof.random_groups,
        activity=prof.activity,
        active=prof.active,
        summary=_summary(loaded, ds.name, len(z), prof, groups, notes),
        notes=notes,
    )
    if cfg.probe:
        _add_probes(result, loaded, codes, labels, factors, cfg.seed)
    return result


def _latent_columns(
    loaded: LoadedRun, codes: dict[str, torch.Tensor], notes: list[str]
) -> tuple[torch.Tensor, list[str], list[str]]:
    """The codes analysed as one matrix (N, D), with each column's name and group: a JADE
    run's posterior means, content first, or a single/paired run's bottleneck features."""
    if loaded.spec.generative:
        z = torch.cat([codes["mu_c"], codes["mu_s"]], 1)  # (N, C + S): content first
        n_c, n_s = codes["mu_c"].shape[1], codes["mu_s"].shape[1]
        names = [f"content_{i}" for i in range(n_c)] + [f"style_{i}" for i in range(n_s)]
        return z, names, ["content"] * n_c + ["style"] * n_s
    z = codes["features"]
    notes.append(
        f"a {loaded.kind} model has no style latents: shown are its {z.shape[1]}-d bottleneck "
        "features (the classifier's input); the disentanglement ratio is not defined"
    )
    return z, [f"feature_{i}" for i in range(z.shape[1])], ["feature"] * z.shape[1]


def _summary(
    loaded: LoadedRun,
    dataset: str,
    images: int,
    prof: VarianceProfile,
    groups: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """The role's numbers for the report: each group's mean v, the ratio, the active dims."""
    active = prof.active
    content_within = _group_mean(prof.within, groups, active, "content")
    style_within = _group_mean(prof.within, groups, active, "style")
    return {
        "dataset": dataset,
        "images": images,
        "disentanglement_ratio": _ratio(loaded, content_within, style_within, notes),
        "content_within": content_within,
        "style_within": style_within,
        "feature_within": _group_mean(prof.within, groups, active, "feature"),
        "random_groups_mean": _nanmean(prof.random_groups),
        "group_size": prof.group_size,
        "active_content": _count(groups, active, "content"),
        "active_style": _count(groups, active, "style"),
        "active_features": _count(groups, active, "feature"),
        "dims": len(groups),
        "content_dims": groups.count("content"),
        "style_dims": groups.count("style"),
    }


def _ratio(
    loaded: LoadedRun, content_within: float | None, style_within: float | None, notes: list[str]
) -> float | None:
    """Style mean v / content mean v, defined for JADE runs only; notes say why it is missing."""
    if not loaded.spec.generative:
        return None  # the note from _latent_columns already says why
    if style_within is None:
        notes.append("no active style dimension: every style latent collapsed to the prior")
    if content_within is None:
        notes.append("no active content dimension")
    if style_within is not None and content_within is not None and content_within > 0:
        return style_within / content_within
    return None


def _add_probes(
    result: RoleLatents,
    loaded: LoadedRun,
    codes: dict[str, torch.Tensor],
    labels: torch.Tensor,
    factors: dict[str, torch.Tensor],
    seed: int,
) -> None:
    """Fill in `result.probe`, with a note when it is skipped or can predict the class only."""
    if result.images < MIN_PROBE_IMAGES:
        result.notes.append(f"probe skipped: fewer than {MIN_PROBE_IMAGES} images")
        return
    ds = loaded.datasets[result.role]
    result.probe = _probes(loaded, codes, labels, factors, ds.info, seed, result.role)
    if not factors:
        result.notes.append(
            f"{ds.name} records no style factors (only synth-street and synth-hand do); "
            "the probe predicts the class only"
        )


def _group_mean(
    within: torch.Tensor, groups: list[str], active: torch.Tensor, name: str
) -> float | None:
    """Mean v over the classes and the active dims of one group (None: no such dim)."""
    cols = [i for i, g in enumerate(groups) if g == name and bool(active[i])]
    return _nanmean(within[:, cols])


def _nanmean(t: torch.Tensor) -> float | None:
    vals = t[~torch.isnan(t)]
    return float(vals.mean()) if len(vals) else None


def _count(groups: list[str], active: torch.Tensor, name: str) -> int | None:
    dims = [i for i, g in enumerate(groups) if g == name]
    return sum(int(active[i]) for i in dims) if dims else None


@dataclass
class VarianceProfile:
    within: torch.Tensor  # (K, D) normalised within-class variance (NaN: inactive, < 2 images)
    random_groups: torch.Tensor  # (D,) the same for random groups of the median class size
    activity: torch.Tensor  # (D,) variance over all images
    active: torch.Tensor  # (D,) bool: activity >= threshold
    class_sizes: torch.Tensor  # (K,)
    group_size: int


def variance_profile(
    z: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    threshold: float,
    seed: int,
    tag: str = "",
) -> VarianceProfile:
    """v[k, d] = Var_{class k}(z_d) / Var_{all}(z_d) (population variances), and Fig. 2b's view."""
    z = z.double()  # (N, D)
    activity = z.var(0, unbiased=False)  # (D,)
    active = activity >= threshold
    safe = torch.where(active, activity, torch.ones_like(activity))
    within = torch.full((num_classes, z.shape[1]), math.nan, dtype=torch.float64)
    sizes = torch.bincount(labels, minlength=num_classes)
    for c in range(num_classes):
        if sizes[c] >= 2:
            within[c] = z[labels == c].var(0, unbiased=False) / safe
    within[:, ~active] = math.nan
    # Fig. 2b: random groups of images of the median class size, same normalisation.
    big = sizes[sizes >= 2]
    group = int(big.median()) if len(big) else len(z)
    group = max(2, min(group, len(z)))
    gen = torch.Generator().manual_seed(derive_seed(seed, "latents", tag))
    rand = torch.zeros(z.shape[1], dtype=torch.float64)
    for _ in range(RANDOM_GROUPS):
        pick = torch.randperm(len(z), generator=gen)[:group]
        rand += z[pick].var(0, unbiased=False) / safe
    rand /= RANDOM_GROUPS
    rand[~active] = math.nan
    return VarianceProfile(within, rand, activity, active, sizes, group)


# --------------------------------------------------------------------------- probes


def _probes(
    loaded: LoadedRun,
    codes: dict[str, torch.Tensor],
    labels: torch.Tensor,
    factors: dict[str, torch.Tensor],
    info: dict[str, Any],
    seed: int,
    role: str,
) -> list[dict[str, Any]]:
    """Held-out linear probes: fit on one half of the split, score on the other."""
    if loaded.spec.generative:
        feature_sets = {"content": codes["mu_c"], "style": codes["mu_s"]}
    else:
        feature_sets = {"features": codes["features"]}
    n = len(labels)
    gen = torch.Generator().manual_seed(derive_seed(seed, "probe", role))
    perm = torch.randperm(n, generator=gen)
    train, test = perm[: n // 2], perm[n // 2 :]
    categorical = set(info.get("categorical_factors") or [])
    targets: list[tuple[str, torch.Tensor, bool]] = [("class", labels, True)]
    targets += [(name, factors[name], name in categorical) for name in sorted(factors)]
    rows = []
    for name, values, is_cat in targets:
        if values.float()[train].std() == 0:
            continue  # constant on the probe's training half: nothing to predict
        row: dict[str, Any] = {"factor": name, "metric": "accuracy" if is_cat else "r2"}
        for group, x in feature_sets.items():
            row[group] = probe_score(x, values, train, test, is_cat)
        if is_cat:
            _, inverse = torch.unique(values, return_inverse=True)
            majority = torch.mode(inverse[train]).values
            row["chance"] = float((inverse[test] == majority).double().mean())
        else:
            row["chance"] = 0.0
        rows.append(row)
    return rows


def probe_score(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, categorical: bool
) -> float:
    x = x.double()
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
    x = (x - mean) / std  # standardised with the training half's statistics only
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # bias column
    if not categorical:
        t = y.double()
        a = x[train]
        reg = 1e-3 * len(train) * torch.eye(a.shape[1], dtype=a.dtype)
        reg[-1, -1] = 0.0  # the bias is not shrunk
        w = torch.linalg.solve(a.T @ a + reg, a.T @ t[train])
        pred = x[test] @ w
        sst = (t[test] - t[test].mean()).pow(2).sum()
        return float(1 - (t[test] - pred).pow(2).sum() / sst) if sst > 0 else 0.0
    _, target = torch.unique(y, return_inverse=True)
    n_cls = int(target.max()) + 1
    with torch.enable_grad():
        w = torch.zeros(x.shape[1], n_cls, dtype=x.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")
        xt, yt = x[train], target[train]

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(xt @ w, yt) + 1e-3 * w[:-1].pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return float(((x[test] @ w).argmax(1) == target[test]).double().mean())


# --------------------------------------------------------------------------- files


def _write_role(out: Path, r: RoleLatents, loaded: LoadedRun) -> list[Path]:
    from jadecli import plots

    role = r.role
    variance = out / f"{role}_variance.csv"
    rows: list[list[Any]] = [
        [c, r.class_sizes[i], *_floats(r.within[i])] for i, c in enumerate(r.classes)
    ]
    rows.append(["random", r.summary["group_size"], *_floats(r.random_groups)])
    write_csv(variance, ["class", "images", *r.dim_names], rows)
    dims = out / f"{role}_dimensions.csv"
    mean_within = _col_nanmean(r.within)
    write_csv(
        dims,
        ["dim", "group", "activity", "active", "mean_within_class", "random_groups"],
        [
            [
                name,
                r.groups[d],
                float(r.activity[d]),
                int(r.active[d]),
                mean_within[d],
                _float(r.random_groups[d]),
            ]
            for d, name in enumerate(r.dim_names)
        ],
    )
    png = out / f"{role}_latents.png"
    plots.plot_latent_variance(
        png,
        r.within.numpy(),
        r.random_groups.numpy(),
        r.activity.numpy(),
        r.dim_names,
        r.groups,
        r.classes,
        f"{role} latents: {r.dataset}, {r.images} images ({loaded.kind} run, epoch {loaded.epoch})",
        NORMALISATION,
        ACTIVE_THRESHOLD if loaded.spec.generative else 1e-12,
    )
    files = [variance, dims, png]
    if r.probe:
        groups = ["content", "style"] if loaded.spec.generative else ["features"]
        probe_csv = out / f"{role}_probe.csv"
        write_csv(
            probe_csv,
            ["factor", "metric", *groups, "chance"],
            [[p["factor"], p["metric"], *(p[g] for g in groups), p["chance"]] for p in r.probe],
        )
        files.append(probe_csv)
        if loaded.spec.generative:
            probe_png = out / f"{role}_probe.png"
            plots.plot_probe(
                probe_png,
                r.probe,
                f"{role} ({r.dataset}): held-out linear probes from content vs style latents",
            )
            files.append(probe_png)
    return files


def _float(v: Any) -> float | None:
    f = float(v)
    return None if math.isnan(f) else f


def _floats(t: torch.Tensor) -> list[float | None]:
    return [_float(v) for v in t]


def _col_nanmean(t: torch.Tensor) -> list[float | None]:
    out: list[float | None] = []
    for d in range(t.shape[1]):
        col = t[:, d]
        col = col[~torch.isnan(col)]
        out.append(float(col.mean()) if len(col) else None)
    return out
