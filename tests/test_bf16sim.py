"""benchmarks/bf16sim.py: bf16 autocast's numerics at fp32 speed (for the bf16-vs-fp32 accuracy
comparison on CPUs without native bf16)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.bf16sim import simulated_bf16


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def test_a_simulated_bf16_conv_is_the_fp32_conv_of_bf16_values_rounded_to_bf16():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 8, 10, 10), torch.randn(16, 8, 3, 3), torch.randn(16)
    with torch.autocast("cpu", dtype=torch.bfloat16), simulated_bf16():
        y = F.conv2d(x, w, b, padding=1)
    assert y.dtype == torch.bfloat16  # what autocast returns, as on native hardware
    expected = F.conv2d(_bf16(x), _bf16(w), _bf16(b), padding=1).bfloat16()
    assert torch.equal(y, expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = F.conv2d(x, w, b, padding=1)  # emulated bf16 kernel: fp32 sums, other order
    assert (real.float() - y.float()).abs().max() <= 2**-6 * y.float().abs().max()


def test_simulated_bf16_trains_with_fp32_weights_and_bf16_activations():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    x = torch.randn(5, 3, 6, 6)
    with simulated_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        loss = F.cross_entropy(out.float(), torch.tensor([0, 1, 0, 1, 0]))
        loss.backward()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            again = net(x)  # inference mode reaches the composite ops (conv2d, linear) first
    assert out.dtype == torch.bfloat16 and torch.equal(again, out.detach())
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
