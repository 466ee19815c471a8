"""bf16 autocast's numerics at fp32 speed, for CPUs without native bf16 (AVX2 only).

On such a CPU `--precision bf16` is emulated about 13x slower than fp32 (oneDNN has no fast
bf16 kernel there), too slow to train the runs an accuracy comparison needs. Native bf16
hardware (AVX512_BF16, AMX, bf16 GPUs) multiplies bf16 operands and accumulates in fp32. So does
this: under real `torch.autocast(bfloat16)` (which decides, as in training, which ops run in bf16
and casts their inputs), every convolution and matrix product that receives bf16 tensors, and
its backward, is computed by the fp32 kernel on those bf16 values and its result rounded to
bf16. Everything else (BatchNorm, activations, the losses, Adam) runs exactly as in a real bf16
run. What differs from native hardware is only the fp32 summation order.

    with simulated_bf16():
        ...  # jadecli training at --precision bf16

or, as a stand-in for `python -m jadecli` (what `benchmarks.accuracy --launcher` runs):

    python -m benchmarks.bf16sim train --primary usps --auxiliary mnist --precision bf16 ...
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten
# the ops whose bf16 kernels are slow without native bf16: products and convolutions
# (under inference mode the composite ops arrive before they decompose: conv2d, linear, matmul)
PRODUCTS = {
    aten.conv2d.default,
    aten.linear.default,
    aten.matmul.default,
    aten._convolution.default,
    aten.mkldnn_convolution.default,
    aten.convolution.default,
    aten.convolution_backward.default,
    aten.mm.default,
    aten.addmm.default,
    aten.bmm.default,
    aten.baddbmm.default,
}


class SimulatedBF16(TorchDispatchMode):
    """Run bf16 products as fp32 products of bf16 values, results rounded to bf16."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in PRODUCTS:
            return func(*args, **kwargs)
        bf16 = [
            a.dtype == torch.bfloat16
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor)
        ]
        if not any(bf16):
            return func(*args, **kwargs)

        def up(a: Any) -> Any:
            return a.float() if isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 else a

        def down(a: Any) -> Any:
            return a.bfloat16() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

        out = func(*tree_map(up, args), **tree_map(up, kwargs))
        if func is aten.convolution_backward.default:
            # (grad_input, grad_weight, grad_bias) take the dtypes of input, weight and grad
            dtypes = (args[1].dtype, args[2].dtype, args[0].dtype)
            return tuple(o if o is None else o.to(d) for o, d in zip(out, dtypes, strict=True))
        return tree_map(down, out)


@contextlib.contextmanager
def simulated_bf16() -> Iterator[None]:
    with SimulatedBF16():
        yield


def main() -> None:
    """`python -m jadecli ARGS` with every bf16 product simulated (the warning that bf16 is
    emulated on this CPU is still printed: it is, only faster)."""
    from jadecli.cli import main as jade

    sys.argv[0] = "jade"
    with simulated_bf16():
        jade()


if __name__ == "__main__":
    main()
