"""Rich summaries of the analysis commands' results (the `--format table` view).

Each function takes the same plain report the command prints with `--format json`, so the two
views cannot disagree. Only the CLI calls these.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

MAX_CONFUSION_CLASSES = 20


def _console() -> Console:
    # no markup: dataset names, paths and "v[class, dim]" must print as they are
    return Console(highlight=False, soft_wrap=False, markup=False)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}g}"


def _fixed(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _header(console: Console, report: dict[str, Any], what: str) -> None:
    limit = f", first {report['limit']}" if report.get("limit") else ""
    console.print(
        f"{what}: {report['run']} ({report['model']} model, {report['checkpoint']}, "
        f"epoch {report['epoch']}, status {report['status']}; split {report['split']}{limit})"
    )


def print_evaluation(report: dict[str, Any]) -> None:
    console = _console()
    _header(console, report, "evaluate")
    roles = [(r, report[r]) for r in ("primary", "auxiliary") if report.get(r)]
    console.print(_classification_table(roles))
    if any(res.get("elbo") for _, res in roles):  # only JADE runs have an ELBO
        _print_elbo(console, report, roles)
    console.print(_per_class_table(roles))
    _print_confusions(console, roles)
    _files(console, report)
    if report.get("passed") is True:
        console.print(
            f"passed: primary accuracy {_pct(report['primary']['accuracy'])} >= "
            f"--min-accuracy {_pct(report['min_accuracy'])}"
        )


def _classification_table(roles: list[tuple[str, dict[str, Any]]]) -> Table:
    """Accuracy and NLL, one row per dataset evaluated."""
    table = Table(title="classification")
    for col in ("dataset", "images", "accuracy", "NLL (nats)"):
        table.add_column(col, justify="right" if col != "dataset" else "left")
    for role, res in roles:
        table.add_row(
            f"{role} ({res['dataset']})",
            str(res["images"]),
            _pct(res["accuracy"]),
            _num(res["nll"]),
        )
    return table


def _print_elbo(
    console: Console, report: dict[str, Any], roles: list[tuple[str, dict[str, Any]]]
) -> None:
    """A JADE run's test ELBO terms per dataset, and how it drew them."""
    elbo = Table(title="test ELBO terms (nats per image)")
    for col in ("dataset", "recon", "KL style", "KL content", "ELBO"):
        elbo.add_column(col, justify="right" if col != "dataset" else "left")
    for role, res in roles:
        e = res.get("elbo") or {}
        elbo.add_row(
            f"{role} ({res['dataset']})",
            *(_fixed(e.get(k)) for k in ("recon", "kl_style", "kl_content", "elbo")),
        )
    console.print(elbo)
    console.print(
        "one latent sample per image, content prior N(0, I); KL between the content "
        f"posteriors of same-class test pairs: {_num(report.get('kl_match'))}"
    )


def _per_class_table(roles: list[tuple[str, dict[str, Any]]]) -> Table:
    """Accuracy per class, a column per dataset (classes as the first dataset names them)."""
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    for role, _ in roles:
        per_class.add_column(role, justify="right")
    classes = list(roles[0][1]["per_class"])
    for c in classes:
        cells = []
        for _, res in roles:
            pc = res["per_class"].get(c) or {}
            cells.append(f"{_pct(pc.get('accuracy'))} of {pc.get('images', 0)}")
        per_class.add_row(c, *cells)
    return per_class


def _print_confusions(console: Console, roles: list[tuple[str, dict[str, Any]]]) -> None:
    """Each dataset's confusion matrix, or where to find it when it has too many classes."""
    for role, res in roles:
        names = list(res["per_class"])
        if len(names) > MAX_CONFUSION_CLASSES:
            console.print(
                f"{role} confusion matrix: {len(names)} classes, see confusion_{role}.csv"
            )
            continue
        conf = Table(title=f"{role} confusion matrix (rows: true class, columns: predicted)")
        conf.add_column("")
        for c in names:
            conf.add_column(c, justify="right")
        for c, row in zip(names, res["confusion"], strict=True):
            conf.add_row(c, *(str(v) for v in row))
        console.print(conf)


def print_latents(report: dict[str, Any]) -> None:
    console = _console()
    _header(console, report, "inspect-latents")
    console.print(report["normalisation"])
    for role in ("primary", "auxiliary"):
        res = report.get(role)
        if not res:
            continue
        table = Table(title=f"{role}: {res['dataset']} ({res['images']} images)")
        for col in ("group", "dims", "active", "mean v within a class", "mean v random groups"):
            table.add_column(col, justify="left" if col == "group" else "right")
        if res.get("active_features") is not None:
            table.add_row(
                "features",
                str(res["dims"]),
                str(res["active_features"]),
                _num(res["feature_within"], 3),
                _num(res["random_groups_mean"], 3),
            )
        else:
            for group in ("content", "style"):
                table.add_row(
                    group,
                    str(res[f"{group}_dims"]),
                    str(res[f"active_{group}"]),
                    _num(res[f"{group}_within"], 3),
                    "",
                )
            table.add_row("all", str(res["dims"]), "", "", _num(res["random_groups_mean"], 3))
        console.print(table)
        ratio = res.get("disentanglement_ratio")
        if ratio is not None:
            console.print(
                f"disentanglement ratio ({role}): {ratio:.3g} (mean v of style dims / "
                "mean v of content dims; higher = more disentangled)",
                style="bold",
            )
        for note in res.get("notes") or []:
            console.print(f"note: {note}")
        probe = res.get("probe") or []
        if probe:
            groups = [g for g in ("content", "style", "features") if g in probe[0]]
            pt = Table(title=f"{role}: held-out linear probes (fit on half the images)")
            pt.add_column("target")
            pt.add_column("metric")
            for g in groups:
                pt.add_column(f"from {g}", justify="right")
            pt.add_column("chance", justify="right")
            for p in probe:
                fmt = _pct if p["metric"] == "accuracy" else (lambda v: _num(v, 3))
                pt.add_row(
                    p["factor"],
                    "accuracy" if p["metric"] == "accuracy" else "R^2",
                    *(fmt(p.get(g)) for g in groups),
                    fmt(p.get("chance")),
                )
            console.print(pt)
    _files(console, report)


def print_reconstruct(report: dict[str, Any]) -> None:
    console = _console()
    _header(console, report, "reconstruct")
    table = Table(title="reconstructions (from posterior means)")
    for col in ("dataset", "mean BCE (nats)", "mean MSE", "class kept", "prediction kept"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for role, r in (report.get("reconstruction") or {}).items():
        table.add_row(
            role,
            _num(r["mean_bce"], 5),
            _num(r["mean_mse"], 3),
            _pct(r["class_kept"]),
            _pct(r["prediction_kept"]),
        )
    console.print(table)
    swaps = Table(title="style/content swaps, classified by the run's own encoder + classifier")
    cols = ("content + style", "decoder", "content class kept", "prediction kept", "style's class")
    for col in cols:
        swaps.add_column(col, justify="left" if col == "content + style" else "right")
    for s in (report.get("swaps") or {}).values():
        swaps.add_row(
            f"{s['content_from']} + {s['style_from']}",
            s["decoder"],
            _pct(s["content_kept"]),
            _pct(s["content_prediction_kept"]),
            _pct(s["style_class"]),
        )
    console.print(swaps)
    for role, t in (report.get("traverse") or {}).items():
        changed = t["class_changed"]
        console.print(
            f"traverse {role} image #{t['image_index']} (class {t['class']}, predicted "
            f"{t['predicted']}): predicted class changed in {_pct(changed.get('content'))} of "
            f"content-dimension steps and {_pct(changed.get('style'))} of style-dimension steps"
        )
    _files(console, report)


def _files(console: Console, report: dict[str, Any]) -> None:
    console.print(f"wrote {len(report['files'])} files to {report['output_dir']}:")
    for f in report["files"]:
        console.print(f"  {f}")
