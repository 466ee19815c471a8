"""Does a JADE model's generative half work? Two kinds of number, read without looking at a
picture, each scored by the model itself (a generated image -> its dataset's encoder ->
classifier on the content mean):

- class kept: how often the reconstruction of an image (decoded from its posterior means) is
  classified as the image's class. Decoders that draw grey class averages score near chance.
- content kept by swaps: decode the content latents of image j with the style latents of image
  i; how often the result is classified as j's class. Across datasets (MNIST digits drawn in
  SVHN's style, and back) this says whether content and style are separated at all.

Both are also given against the model's own class of the original image (`prediction kept`):
a classifier that is right 75% of the time cannot have its reconstructions recognised 90% of the
time, so "class kept" is bounded by accuracy, while "prediction kept" measures the decoders
alone (does a generated image say what the encoder read?).

`jade reconstruct` draws these images and prints these numbers; `jade train` records them for a
fixed sample of test images every time it evaluates a JADE run (metrics.csv, the manifest's
final metrics, `--log`), from the same functions, so the two agree.

    python -c "from jadecli.generative import balanced_sample; import torch; \
print(balanced_sample(torch.tensor([0, 1, 0, 1, 2]), 4, 3, seed=0, role='primary'))"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jadecli.compute import to_input
from jadecli.data.core import ImageSet
from jadecli.data.sampling import derive_seed
from jadecli.metrics import DECODER_COLUMNS
from jadecli.model import JADE
from jadecli.spec import AUXILIARY, PRIMARY

# (name, content from, style from, decoder): every swap grid `jade reconstruct` draws
SWAPS = (
    ("primary", PRIMARY, PRIMARY, PRIMARY),
    ("auxiliary", AUXILIARY, AUXILIARY, AUXILIARY),
    ("auxiliary_content_in_primary_style", AUXILIARY, PRIMARY, PRIMARY),
    ("primary_content_in_auxiliary_style", PRIMARY, AUXILIARY, AUXILIARY),
)
CROSS_SWAPS = SWAPS[2:]  # the two that say whether content and style separate across datasets
# Test images per dataset `jade train` scores, as `jade reconstruct --n 16` picks them: its swaps
# are 16 x 16 grids (a second at digit sizes); 32 x 32 would cost about 4x, at every evaluation.
SAMPLE = 16
SAMPLE_SEED = 0  # ... picked as `jade reconstruct --seed 0` picks them


def balanced_sample(
    labels: torch.Tensor, n: int, num_classes: int, seed: int, role: str
) -> torch.Tensor:
    """Positions of n images, one class after another (0, 1, 2, ..., 0, 1, ...), each drawn at
    random within its class; fewer where the split has fewer."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "reconstruct", role))
    pools = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members):
            pools.append(members[torch.randperm(len(members), generator=gen)])
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n and any(depth < len(p) for p in pools):
        for p in pools:
            if depth < len(p) and len(chosen) < n:
                chosen.append(int(p[depth]))
        depth += 1
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class Picked:
    """Images of one dataset and their posterior means."""

    role: str
    part: ImageSet  # the chosen images (uint8) and labels
    index: torch.Tensor  # their positions in the split
    x: torch.Tensor  # (n, C, H, W) float in [0, 1] on the device
    mu_s: torch.Tensor  # (n, style_dim) fp32
    mu_c: torch.Tensor  # (n, content_dim) fp32
    predicted: torch.Tensor  # (n,) the model's class of each image (on the CPU)


@torch.inference_mode()
def pick(
    model: JADE, role: str, split: ImageSet, n: int, seed: int, device: torch.device
) -> Picked:
    """n class-balanced images of `split` (see `balanced_sample`) and their posterior means.
    Call under the run's autocast and with the model in eval mode."""
    index = balanced_sample(split.labels, n, model.spec.num_classes, seed, role)
    sub = split.subset(index)
    x = to_input(sub.images, device)  # (n, C, H, W)
    q = model.encoder(role)(x).float()
    predicted = model.classifier(q.mu_c).argmax(1).cpu()
    return Picked(role, sub, index, x, q.mu_s, q.mu_c, predicted)


@torch.inference_mode()
def classify(model: JADE, role: str, x: torch.Tensor) -> torch.Tensor:
    """The model's own class of images of `role`'s kind (posterior mean -> classifier), (B,)."""
    return model.classify(role, x).argmax(1).cpu()


@torch.inference_mode()
def reconstructions(model: JADE, p: Picked) -> tuple[torch.Tensor, torch.Tensor]:
    """The images decoded from their posterior means (n, C, H, W) in [0, 1], and their class."""
    recon = model.decode(p.role, p.mu_s, p.mu_c)
    return recon, classify(model, p.role, recon)


@torch.inference_mode()
def swaps(
    model: JADE, decoder: str, content: Picked, style: Picked
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (style i, content j) combination decoded by `decoder`, row-major over (i, j): the
    images (ns * nc, C, H, W) and the model's class of each (ns, nc)."""
    nc, ns = len(content.index), len(style.index)
    z_s = style.mu_s.repeat_interleave(nc, 0)  # (ns * nc, style_dim)
    z_c = content.mu_c.repeat(ns, 1)  # (ns * nc, content_dim)
    images = model.decode(decoder, z_s, z_c)
    return images, classify(model, decoder, images).view(ns, nc)


def agreement(predicted: torch.Tensor, wanted: torch.Tensor) -> float:
    """The share of predictions equal to the classes wanted (broadcast, on the CPU)."""
    return (predicted == wanted.cpu()).double().mean().item()


def swap_scores(
    content_labels: torch.Tensor, style_labels: torch.Tensor, predicted: torch.Tensor
) -> tuple[float, float | None]:
    """How often a swap keeps the content image's class, and how often it takes the style
    image's instead (counted where the two differ; None when they never do)."""
    c, s = content_labels.cpu()[None, :], style_labels.cpu()[:, None]  # (1, nc), (ns, 1)
    kept = agreement(predicted, c)
    differ = (s != c).expand_as(predicted)
    leak = (predicted == s)[differ]
    return kept, (leak.double().mean().item() if len(leak) else None)


@torch.inference_mode()
def decoder_metrics(
    model: JADE, primary: ImageSet, auxiliary: ImageSet, device: torch.device
) -> dict[str, float]:
    """The numbers `jade train` records for a JADE run, on SAMPLE images of each split given
    (the test splits): class kept by each dataset's reconstructions, content kept by the two
    cross-dataset swaps. Call under the run's autocast; the model is scored in eval mode."""
    was_training = model.training
    model.eval()
    picked = {
        role: pick(model, role, split, SAMPLE, SAMPLE_SEED, device)
        for role, split in ((PRIMARY, primary), (AUXILIARY, auxiliary))
    }
    scores = []  # in DECODER_COLUMNS' order
    for role in (PRIMARY, AUXILIARY):  # class kept by each dataset's reconstructions
        _, predicted = reconstructions(model, picked[role])
        scores.append(agreement(predicted, picked[role].part.labels))
    for _, c_role, s_role, d_role in CROSS_SWAPS:  # content kept: aux -> primary, the reverse
        content, style = picked[c_role], picked[s_role]
        _, predicted = swaps(model, d_role, content, style)
        scores.append(swap_scores(content.part.labels, style.part.labels, predicted)[0])
    model.train(was_training)
    return dict(zip(DECODER_COLUMNS, scores, strict=True))
