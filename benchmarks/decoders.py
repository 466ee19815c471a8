"""Score JADE runs' decoders on many dev images, by the run's own encoder and classifier.

`jade reconstruct --n 32` scores 32 images per dataset: one image moves a score by 3 points,
too coarse to choose a recipe by. This scores N class-balanced images per dataset (default 300)
with the same functions (`jadecli.generative`): the reconstructions, and the two cross-dataset
swaps over N contents x S styles. Images never come from the test split: the primary's are its
training images outside the labeled subset and --val (`train-unlabeled`), the auxiliary's its
training images (the run trained on them; an auxiliary's dev images do not exist when the run
used all of them). Cells are *class kept* (against the label) / *prediction kept* (against the
model's class of the original: the decoders alone, not bounded by accuracy). `--by-confidence`
adds the primary reconstructions' prediction kept per band of the model's confidence in the
original.

    python -m benchmarks.decoders RUN [RUN ...] --n 300 --styles 20 --data-dir DATA_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jadecli.analysis.common import open_run
from jadecli.config.commands import RunSource
from jadecli.generative import Picked, agreement, pick, reconstructions, swap_scores, swaps
from jadecli.progress import NullReporter
from jadecli.spec import AUXILIARY, PRIMARY

SPLITS = {PRIMARY: "train-unlabeled", AUXILIARY: "train"}
BANDS = ((0.0, 0.6), (0.6, 0.9), (0.9, 0.99), (0.99, 1.01))


def pct(pair: tuple[float, float]) -> str:
    return f"{100 * pair[0]:.1f} / {100 * pair[1]:.1f}"


def score(run: Path, n: int, styles: int, data_dir: str | None, by_confidence: bool) -> str:
    source = RunSource(run=run, data_dir=Path(data_dir) if data_dir else None)
    loaded = open_run(source, NullReporter(), need_decoder="benchmarks.decoders")
    model = loaded.model
    model.eval()
    cells: dict[str, tuple[float, float]] = {}
    with loaded.autocast(), torch.inference_mode():
        picked: dict[str, tuple[Picked, Picked]] = {}
        for role, split in SPLITS.items():
            images = loaded.images(role, split)
            assert images is not None, f"{run}: no {split} images of the {role}"
            picked[role] = (
                pick(model, role, images, n, 1, loaded.device),  # contents, reconstructions
                pick(model, role, images, styles, 2, loaded.device),  # styles of the swaps
            )
        recon: dict[str, torch.Tensor] = {}  # the model's class of each reconstruction
        for role, name in ((PRIMARY, "recon P"), (AUXILIARY, "recon A")):
            p = picked[role][0]
            recon[role] = predicted = reconstructions(model, p)[1]
            cells[name] = (agreement(predicted, p.part.labels), agreement(predicted, p.predicted))
        for name, c_role, s_role in (("A->P", AUXILIARY, PRIMARY), ("P->A", PRIMARY, AUXILIARY)):
            content, style = picked[c_role][0], picked[s_role][1]
            _, predicted = swaps(model, s_role, content, style)
            cells[name] = (
                swap_scores(content.part.labels, style.part.labels, predicted)[0],
                swap_scores(content.predicted, style.predicted, predicted)[0],
            )
        p = picked[PRIMARY][0]
        accuracy = agreement(p.predicted, p.part.labels)
        line = f"| {run} | {100 * accuracy:.1f} | " + " | ".join(pct(v) for v in cells.values())
        if by_confidence:
            confidence = model.classifier(p.mu_c).float().softmax(1).max(1).values.cpu()
            kept = recon[PRIMARY] == p.predicted
            for lo, hi in BANDS:
                band = (confidence >= lo) & (confidence < hi)
                share = kept[band].double().mean().item() if band.any() else float("nan")
                line += f" | {int(band.sum())}: {100 * share:.1f}"
    return line + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="JADE run folders")
    ap.add_argument("--n", type=int, default=300, help="images per dataset (default 300)")
    ap.add_argument("--styles", type=int, default=20, help="styles per swap (default 20)")
    ap.add_argument("--data-dir", default=None, help="where the runs' datasets are now")
    ap.add_argument(
        "--by-confidence", action="store_true", help="prediction kept per confidence band"
    )
    args = ap.parse_args(argv)
    head = "| run | acc P (sample) | recon P | recon A | swap A->P | swap P->A |"
    if args.by_confidence:
        head += "".join(f" conf [{lo}, {min(hi, 1.0)}): n: kept |" for lo, hi in BANDS)
    print(f"{args.n} images per dataset ({SPLITS}), {args.styles} styles per swap; cells: "
          "class kept / prediction kept, %")  # fmt: skip
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for run in args.runs:
        print(score(run, args.n, args.styles, args.data_dir, args.by_confidence), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
