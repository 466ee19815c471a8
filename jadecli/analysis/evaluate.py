"""`jade evaluate RUN`: how good is a trained run?

For the primary and the auxiliary dataset (one split of each): accuracy, per-class accuracy, the
confusion matrix, the classifier's mean negative log-likelihood, and for JADE the test ELBO terms.
Files go to RUN/analysis/evaluate-<split>/ (summary.json, per_class.csv, confusion_<role>.csv and
.png); the manifest gets one `analyses` entry.

    jade evaluate runs/quickstart --format json | python -c "import json,sys; \
print(json.load(sys.stdin)['primary']['accuracy'])"

The JADE test ELBO, per image and in nats (pixels in [0, 1] scored as Bernoulli probabilities):

    -ELBO(x) = BCE(x, dec([z_s, z_c])) + KL(q(z_s|x) || N(0, I)) + KL(q(z_c|x) || N(0, I))

with one z ~ q(z|x) per image from a seeded generator. At test time there is no paired image, so
the content prior is N(0, I) for both datasets; `kl_match` separately reports the training
objective's KL(q(z_c^P|x_P) || q(z_c^A|x_A)) over same-class test pairs (one random auxiliary
image of the same class per primary image).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from jadecli.analysis.common import (
    LoadedRun,
    open_run,
    output_dir,
    publish,
    write_csv,
)
from jadecli.compute import to_input
from jadecli.config import ConfigError, EvaluateConfig
from jadecli.config.data_options import unlabeled_sources
from jadecli.data.core import ImageSet
from jadecli.data.sampling import derive_seed
from jadecli.objective import elbo_terms, kl_normal
from jadecli.progress import Reporter

ELBO_TERMS = ("recon", "kl_style", "kl_content")  # per image, from objective.elbo_terms


@dataclass
class EvaluateResult:
    report: dict[str, Any]  # what --format json prints (also saved as summary.json)
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    passed: bool | None = None  # the --min-accuracy gate, None when not asked for


def evaluate(cfg: EvaluateConfig, reporter: Reporter) -> EvaluateResult:
    """Evaluate RUN's checkpoint on one split of its datasets; write the files; record it."""
    loaded = open_run(cfg, reporter)
    if cfg.split == "train-unlabeled" and "rest" in unlabeled_sources(loaded.cfg.unlabeled):
        reporter.warn(
            "--split train-unlabeled: this run trained on these images without their labels "
            "(--unlabeled rest), so this is not a held-out score; hold out --val for one"
        )
    t0 = time.perf_counter()
    roles: dict[str, dict[str, Any] | None] = {}
    codes: dict[str, tuple[ImageSet, dict[str, torch.Tensor]]] = {}
    for role in ("primary", "auxiliary"):
        if role not in loaded.datasets:
            roles[role] = None
            continue
        part = loaded.images(role, cfg.split, cfg.test_limit)
        if part is None:
            reporter.info(f"the {role} dataset has no {cfg.split} images; skipped")
            roles[role] = None
            continue
        result, kept = _evaluate_part(loaded, role, part, cfg.seed)
        roles[role] = result
        if kept:
            codes[role] = (part, kept)
    if roles["primary"] is None:
        raise ConfigError("split", f"{cfg.split}: the primary dataset has no such images")
    kl_match = _kl_match(codes, loaded.spec.num_classes, cfg.seed) if len(codes) == 2 else None
    seconds = time.perf_counter() - t0

    out = output_dir(loaded, "evaluate", cfg.split, cfg.test_limit)
    files = _write_files(out, loaded, roles)
    primary_acc = roles["primary"]["accuracy"]
    passed = None if cfg.min_accuracy is None else primary_acc >= cfg.min_accuracy
    body = {
        "limit": cfg.test_limit,
        "seconds": round(seconds, 3),
        "primary": roles["primary"],
        "auxiliary": roles["auxiliary"],
        "kl_match": kl_match,
        "min_accuracy": cfg.min_accuracy,
        "passed": passed,
    }
    entry = {
        "limit": cfg.test_limit,
        "primary_accuracy": primary_acc,
        "auxiliary_accuracy": (roles["auxiliary"] or {}).get("accuracy"),
        "primary_nll": roles["primary"]["nll"],
        "kl_match": kl_match,
        "min_accuracy": cfg.min_accuracy,
        "passed": passed,
    }
    report, files = publish(loaded, "evaluate", cfg.split, out, body, files, entry, reporter)
    return EvaluateResult(report, out, files, passed)


@torch.inference_mode()
def _evaluate_part(
    loaded: LoadedRun, role: str, part: ImageSet, seed: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Metrics of one dataset split, and (JADE) its content posteriors for the pair KL."""
    model, device, k = loaded.model, loaded.device, loaded.spec.num_classes
    batch = loaded.source.batch_size
    gen = torch.Generator(device=device).manual_seed(derive_seed(seed, "evaluate", role))
    preds: list[torch.Tensor] = []
    elbo = torch.zeros(len(ELBO_TERMS), dtype=torch.float64)  # sums over images (JADE)
    posterior: dict[str, list[torch.Tensor]] = {}  # content posteriors, for the pair KL
    nll = torch.zeros((), dtype=torch.float64)
    for start in range(0, len(part), batch):
        x = to_input(part.images[start : start + batch], device)  # (B, C, H, W)
        y = part.labels[start : start + batch].to(device)
        with loaded.autocast():  # the run's precision; the ELBO terms are fp32
            out = model.evaluate_batch(role, x, gen)
        logits = out.logits
        if out.q is not None:  # JADE
            per_image = elbo_terms(out, x)
            elbo += torch.stack([per_image[t].sum() for t in ELBO_TERMS]).double().cpu()
            posterior.setdefault("mu_c", []).append(out.q.mu_c.float().cpu())
            posterior.setdefault("logvar_c", []).append(out.q.logvar_c.float().cpu())
        nll += F.cross_entropy(logits.float(), y, reduction="sum").double().cpu()
        preds.append(logits.argmax(1).cpu())
    n = len(part)
    pred = torch.cat(preds)
    confusion = torch.bincount(part.labels * k + pred, minlength=k * k).view(k, k)  # (true, pred)
    correct = confusion.diag()
    per_class_n = confusion.sum(1)
    ds = loaded.datasets[role]
    result: dict[str, Any] = {
        "dataset": ds.name,
        "images": n,
        "accuracy": float(correct.sum()) / n,
        "nll": float(nll) / n,
        "per_class": {
            c: {
                "images": int(per_class_n[i]),
                "accuracy": float(correct[i]) / int(per_class_n[i]) if per_class_n[i] else None,
            }
            for i, c in enumerate(ds.classes)
        },
        "confusion": confusion.tolist(),
        "elbo": None,
    }
    if posterior:
        recon, kl_s, kl_c = (float(v) / n for v in elbo)
        result["elbo"] = {
            "recon": recon,
            "kl_style": kl_s,
            "kl_content": kl_c,
            "elbo": -(recon + kl_s + kl_c),
            "pixels": int(part.images[0].numel()),
        }
    return result, {name: torch.cat(values) for name, values in posterior.items()}


def _kl_match(
    codes: dict[str, tuple[ImageSet, dict[str, torch.Tensor]]], num_classes: int, seed: int
) -> float | None:
    """Mean KL(q(z_c^P|x_P) || q(z_c^A|x_A)) over same-class test pairs (seeded)."""
    prim, q_p = codes["primary"]
    aux, q_a = codes["auxiliary"]
    gen = torch.Generator().manual_seed(derive_seed(seed, "evaluate", "pairs"))
    partner = torch.full((len(prim),), -1, dtype=torch.long)
    for c in range(num_classes):
        p_idx = torch.nonzero(prim.labels == c).flatten()
        a_idx = torch.nonzero(aux.labels == c).flatten()
        if len(p_idx) and len(a_idx):
            partner[p_idx] = a_idx[torch.randint(len(a_idx), (len(p_idx),), generator=gen)]
    ok = partner >= 0
    if not bool(ok.any()):
        return None
    kl = kl_normal(
        q_p["mu_c"][ok], q_p["logvar_c"][ok], q_a["mu_c"][partner[ok]], q_a["logvar_c"][partner[ok]]
    )
    return float(kl.mean())


def _write_files(
    out: Path, loaded: LoadedRun, roles: dict[str, dict[str, Any] | None]
) -> list[Path]:
    from jadecli import plots

    files: list[Path] = []
    rows: list[list[Any]] = []
    for role, res in roles.items():
        if res is None:
            continue
        classes = loaded.datasets[role].classes
        matrix = res["confusion"]
        csv_path = out / f"confusion_{role}.csv"
        write_csv(
            csv_path,
            ["true \\ predicted", *classes],
            [[c, *matrix[i]] for i, c in enumerate(classes)],
        )
        png_path = out / f"confusion_{role}.png"
        import numpy as np

        plots.plot_confusion(
            png_path,
            np.asarray(matrix),
            classes,
            f"{role}: {res['dataset']} ({res['images']} images)",
        )
        files += [csv_path, png_path]
        for c in classes:
            pc = res["per_class"][c]
            acc = pc["accuracy"]
            correct = round(acc * pc["images"]) if acc is not None else 0
            rows.append([role, res["dataset"], c, pc["images"], correct, acc])
    per_class = out / "per_class.csv"
    write_csv(per_class, ["role", "dataset", "class", "images", "correct", "accuracy"], rows)
    files.insert(0, per_class)
    return files
