"""Does a JADE primary VAE learn hue, and what does the colour augmentation do to it?

Trains only a primary VAE's style path (`--style-encoder own`'s style CNN and head, and the
decoder; the content input held at 0) on MNIST-M training images for --steps steps of 100, with
the Bernoulli likelihood and the default style KL weight relative to it (beta 0.92 at 32x32
colour), and prints how far the reconstructions' hue (each channel's mean minus the mean of the
three) is from the originals', beside the hue spread of the originals. Arms: no augmentation,
shifts/rotations/zooms only, colour jitter without the channel permutation, the default jitter.

    python -m benchmarks.vae_hue --data-dir DATA_DIR --steps 400 --arm default
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import jadecli.augment as augment_module
from jadecli.augment import Augment, augment
from jadecli.data.registry import load_dataset
from jadecli.model import build_model, reparameterize
from jadecli.objective import kl_standard_normal
from jadecli.spec import ModelSpec

ARMS = ("none", "geometric", "no-permutation", "default")


def _jitter_without_permutation(x: torch.Tensor, strength: float) -> torch.Tensor:
    """jadecli.augment's colour jitter without its random channel permutation."""
    b = x.shape[0]

    def factor(*shape: int) -> torch.Tensor:
        return 1 + (torch.rand(b, *shape, 1, 1, device=x.device) * 2 - 1) * strength

    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * factor(1)
    x = x * factor(3)
    mean = x.mean((1, 2, 3), keepdim=True)
    return mean + (x - mean) * factor(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--arm", choices=ARMS, default="default")
    ap.add_argument("--beta", type=float, default=0.003 / 10 * 3072)  # default kl / recon scale
    ns = ap.parse_args(argv)
    torch.manual_seed(0)
    ds = load_dataset("mnist-m", Path(ns.data_dir), False, None, print)
    images = ds.train.images[:20000]  # (N, 3, 32, 32) uint8
    shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
    spec = ModelSpec("jade", "shared", shape, shape, 10, 10, 10, 500, 0.0, style_encoder="own")
    model = build_model(spec)
    enc, dec = model.primary_encoder, model.primary_decoder
    assert enc.style_cnn is not None
    params = [*enc.style_cnn.parameters(), *enc.style_head.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, 1e-3)
    aug = None
    if ns.arm != "none":
        aug = Augment(0.1, 10.0, 0.1, 0.0 if ns.arm == "geometric" else 0.3)
    if ns.arm == "no-permutation":
        augment_module._colour_jitter = _jitter_without_permutation
    d = math.prod(shape)
    t0 = time.perf_counter()
    for step in range(ns.steps):
        x = images[torch.randint(len(images), (100,))].float() / 255  # (B, C, H, W)
        x = augment(x, aug) if aug is not None else x
        mu, logvar = enc.style_head(enc.style_cnn(x)).chunk(2, 1)
        z = torch.cat([reparameterize(mu, logvar), torch.zeros(100, spec.content_dim)], 1)
        logits = dec(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = kl_standard_normal(mu, logvar)
        loss = (rec.mean() + ns.beta * kl.mean()) / d  # --loss-scale mean's ratio of the two
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 99:
            with torch.no_grad():
                xm, rm = x.mean((2, 3)), torch.sigmoid(logits).mean((2, 3))  # (B, C)
                hue_x, hue_r = xm - xm.mean(1, keepdim=True), rm - rm.mean(1, keepdim=True)
                err, spread = (hue_x - hue_r).abs().mean(), hue_x.abs().mean()
            print(
                f"{ns.arm} step {step + 1}: recon {rec.mean():.1f} nats, style KL {kl.mean():.1f}, "
                f"hue error {err:.4f} of a spread of {spread:.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
