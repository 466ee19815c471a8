"""Score a JADE run's decoders with a classifier that did not train them.

`jade reconstruct` and `jade train` score reconstructions and swaps with the run's own encoder
and classifier. A decoder trained to please that classifier (`--swap-weight`) could draw
patterns it reads as digits without drawing digits; an independent judge - another run on the
same pair, e.g. a paired classifier trained with many labels - tells the two apart. Scores are
shares of generated images the judge classifies as:

- reconstructions: the original's label (class kept) and the judge's class of the original
  (judge kept);
- cross-dataset swaps (content of dataset A in the style of dataset B): the content image's
  label, and the judge's class of the content image.

The run's own scores are printed beside them. Images are picked as `jade reconstruct --n N
--seed SEED` picks them, from `--split` (default train-unlabeled: a dev split, never test).

    python -m benchmarks.judge RUN --judge JUDGE_RUN --data-dir ../shared/data --n 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from jadecli.analysis.common import LoadedRun, open_run
from jadecli.config.commands import RunSource
from jadecli.generative import CROSS_SWAPS, Picked, agreement, pick, reconstructions, swaps
from jadecli.model import JADE, RoleModel
from jadecli.progress import NullReporter
from jadecli.spec import AUXILIARY, PRIMARY


@torch.inference_mode()
def judged(judge: RoleModel, role: str, images: torch.Tensor) -> torch.Tensor:
    """The judge's class of each image of `role`'s kind, (B,) on the CPU."""
    return torch.cat([judge.classify(role, x).argmax(1).cpu() for x in images.split(256)])


def score(loaded: LoadedRun, judge: RoleModel, split: str, n: int, seed: int) -> dict:
    model = loaded.model
    assert isinstance(model, JADE)
    picked: dict[str, Picked] = {}
    splits = {}
    for role in (PRIMARY, AUXILIARY):
        part, used = loaded.images(role, split), split
        if part is None:  # e.g. an auxiliary whose every training image was used
            part, used = loaded.images(role, "test"), "test"
        assert part is not None
        picked[role], splits[role] = pick(model, role, part, n, seed, loaded.device), used
    out: dict = {"splits": splits, "reconstruction": {}, "swaps": {}}
    with loaded.autocast():
        for role, p in picked.items():
            recon, own = reconstructions(model, p)
            j = judged(judge, role, recon)
            j_orig = judged(judge, role, p.x)
            out["reconstruction"][role] = {
                "own_class_kept": agreement(own, p.part.labels),
                "judge_class_kept": agreement(j, p.part.labels),
                "judge_kept": agreement(j, j_orig),
                "judge_accuracy_on_originals": agreement(j_orig, p.part.labels),
            }
        for name, c_role, s_role, d_role in CROSS_SWAPS:
            content, style = picked[c_role], picked[s_role]
            images, own = swaps(model, d_role, content, style)  # (ns * nc, ...), (ns, nc)
            j = judged(judge, d_role, images).view(own.shape)
            j_content = judged(judge, c_role, content.x)[None, :]  # (1, nc)
            out["swaps"][name] = {
                "own_content_kept": agreement(own, content.part.labels[None, :]),
                "judge_content_kept": agreement(j, content.part.labels[None, :]),
                "judge_kept": agreement(j, j_content),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--judge", type=Path, required=True, help="a run on the same pair")
    parser.add_argument("--split", default="train-unlabeled")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    reporter = NullReporter()
    loaded = open_run(
        RunSource(run=args.run, data_dir=args.data_dir), reporter, need_decoder="judge"
    )
    judge = open_run(RunSource(run=args.judge, data_dir=args.data_dir), reporter).model
    result = score(loaded, judge, args.split, args.n, args.seed)
    result.update(run=str(args.run), judge=str(args.judge), n=args.n, seed=args.seed)
    for role, r in result["reconstruction"].items():
        print(
            f"{role:>9} reconstructions: class kept {r['own_class_kept']:.1%} (own), "
            f"{r['judge_class_kept']:.1%} (judge); judge kept {r['judge_kept']:.1%} "
            f"(judge right on originals {r['judge_accuracy_on_originals']:.1%})"
        )
    for name, r in result["swaps"].items():
        print(
            f"{name}: content kept {r['own_content_kept']:.1%} (own), "
            f"{r['judge_content_kept']:.1%} (judge); judge kept {r['judge_kept']:.1%}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
