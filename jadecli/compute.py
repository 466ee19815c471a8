"""Where the arithmetic runs: device, precision, memory layout, CPU threads and the input path.

One module decides these for training and for the analysis commands alike, so a run is
evaluated exactly the way it was trained (same layout, same precision, same batch size):

- **Device.** `auto` is CUDA, then Apple's MPS, then the CPU; asking for a device that is not
  there is an error, never a silent fallback.
- **Layout.** Convolutions run channels-last (NHWC) on CPU and CUDA: oneDNN and cuDNN have
  faster kernels for it (training 1.9x, inference 2-4x on this project's 2-core Xeon).
- **Precision.** `auto` is bf16 where the hardware computes it natively (CUDA GPUs with bf16
  support; x86 CPUs whose /proc/cpuinfo lists avx512_bf16 or amx_bf16), else fp32;
  `bf16` is autocast. Weights, optimiser state and every loss term stay fp32; only convolutions
  and matrix products run in bf16. The analysis commands' `auto` is the precision the run was
  trained in (`analysis_precision`).
- **Threads.** torch's default thread count is the number of physical cores, which overcounts
  inside containers pinned to fewer CPUs; `configure_threads` caps it at the CPUs this process
  may run on, unless the user set OMP_NUM_THREADS.

    python -c "import torch; from jadecli.compute import resolve_precision as r; \
print(r('auto', torch.device('cpu')))"
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from jadecli.errors import JadeError, UsageError

# Images per forward pass when evaluating: best measured on CPU (batch 100 runs 1.6x faster
# than 500 for the paper's SVHN encoder, as the activations then stay in cache).
EVAL_BATCH = 100


def resolve_device(name: str) -> torch.device:
    """`--device auto|cpu|cuda|cuda:N|mps` -> the device; one that is not here is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise JadeError(
                f"--device {name}: CUDA is not available on this machine (torch "
                f"{torch.__version__}, no usable GPU); use --device cpu or --device auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise JadeError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return torch.device(name)
    if name == "mps":
        if not has_mps:
            raise JadeError("--device mps: Apple's MPS is not available here; use --device cpu")
        return torch.device("mps")
    return torch.device("cpu")


# x86 CPU features that compute bf16 dot products in hardware, as /proc/cpuinfo names them:
# AVX512_BF16 (VDPBF16PS) and AMX tiles. oneDNN's bf16 convolutions and matrix products use them;
# without them bf16 is emulated, slower than fp32. (Arm's BF16 extension is not counted: bf16
# training has not been measured to pay there.)
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The native bf16 features this CPU reports (BF16_CPU_FLAGS, read from the `flags` line of
    /proc/cpuinfo, or of `cpuinfo` when given); `()` if none. Where there is no /proc/cpuinfo
    (macOS, Windows), torch's own AMX check is the only evidence."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
            return ("amx_bf16",) if amx is not None and amx() else ()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # the first CPU speaks for all
            flags = set(value.split())
            return tuple(f for f in BF16_CPU_FLAGS if f in flags)
    return ()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 convolutions and matrix products in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(cpu_bf16_features())
    return False


def precision_reason(requested: str, device: torch.device) -> tuple[str, str]:
    """`--precision auto|fp32|bf16` -> (the precision, why), e.g. ("bf16", "native on this CPU
    (avx512_bf16)") or ("fp32", "this CPU has no native bf16 (no avx512_bf16 or amx_bf16)")."""
    if requested == "bf16" and device.type == "mps":
        raise UsageError("--precision bf16 is not supported on MPS; use --precision fp32")
    if device.type == "cpu":
        features = cpu_bf16_features()
        native = f"native on this CPU ({', '.join(features)})"
        missing = "this CPU has no native bf16 (no avx512_bf16 or amx_bf16)"
    elif device.type == "cuda":
        features = ("bf16",) if native_bf16(device) else ()
        name = torch.cuda.get_device_name(device)
        native, missing = f"native on this GPU ({name})", f"{name} has no native bf16"
    else:
        features, native, missing = (), "", f"{device.type} has no bf16 autocast here"
    if requested == "auto":
        return ("bf16", native) if features else ("fp32", missing)
    if requested == "bf16":
        return "bf16", ("requested; " + native) if features else "requested; emulated: " + missing
    return "fp32", "requested"


def resolve_precision(
    requested: str, device: torch.device, warn: Callable[[str], None] | None = None
) -> str:
    """`auto|fp32|bf16` -> `fp32|bf16` for this device (`auto`: bf16 where native)."""
    precision, _ = precision_reason(requested, device)
    if requested == "bf16" and not native_bf16(device) and warn is not None:
        warn(f"{device.type} has no native bf16 here: bf16 will be emulated and slower than fp32")
    return precision


def analysis_precision(
    requested: str, trained: str, device: torch.device, warn: Callable[[str], None]
) -> str:
    """The precision an analysis command computes in. `auto` is the run's own (`trained`), so
    evaluate repeats the accuracy training recorded, emulated bf16 included; fp32 where this
    device has no bf16 at all (MPS, GPUs without bf16)."""
    if requested != "auto":
        return resolve_precision(requested, device, warn)
    if trained == "bf16" and (device.type == "cpu" or native_bf16(device)):
        return resolve_precision("bf16", device, warn)
    return "fp32"


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with ($CXX, g++, clang++ or c++
    on the PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on `device` for `precision == "bf16"`, otherwise nothing."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def memory_format(device: torch.device) -> torch.memory_format:
    return torch.contiguous_format if device.type == "mps" else torch.channels_last


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to `device` in the layout its convolutions run fastest in."""
    return model.to(device=device, memory_format=memory_format(device))


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1] on `device`, in the model's layout."""
    # the layout is changed on the 8-bit copy (a quarter of the bytes), then kept by .float()
    x = images.to(device, non_blocking=True).contiguous(memory_format=memory_format(device))
    return x.float().div_(255)  # (B, C, H, W), NHWC in memory


# glibc keeps freed blocks below its mmap threshold in its heap, and raises that threshold (up
# to 32 MiB) each time a larger block is freed: a step's 10-30 MB activations at 128 px then stay
# resident between steps as fragmented heap (+340 MiB of peak RSS measured). Fixed at 16 MiB,
# larger tensors go back to the system when freed while the small ones of digit-sized images
# stay on the heap (1 MiB cost 35% of the 32 px training speed).
MMAP_THRESHOLD = 16 << 20


def _mallopt(options: dict[int, int], env_names: tuple[str, ...]) -> None:
    """Set glibc malloc options (Linux; no-op elsewhere, on another libc, or when the user set
    any of `env_names` in the environment: theirs win)."""
    if not sys.platform.startswith("linux") or any(n in os.environ for n in env_names):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        for option, value in options.items():
            libc.mallopt(option, int(value))
    except (OSError, AttributeError):  # not glibc (musl, ...): leave the allocator alone
        pass


M_TOP_PAD, M_MMAP_THRESHOLD = -2, -3  # glibc's malloc.h


def configure_allocator() -> None:
    """For training: fix glibc's mmap threshold at MMAP_THRESHOLD (unless the user set
    MALLOC_MMAP_THRESHOLD_)."""
    _mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD}, ("MALLOC_MMAP_THRESHOLD_",))


def keep_heap_top(pad: int) -> None:
    """For inference: glibc keeps up to `pad` bytes of freed memory at the top of its heap, and
    serves blocks up to 32 MiB (its largest threshold) from the heap, instead of giving them
    back to the system (unless the user set MALLOC_TOP_PAD_ or MALLOC_MMAP_THRESHOLD_). A
    forward pass frees and reallocates the same activations every batch; given back, they are
    page-faulted in again each time: measured on 32 px batches of 100, 60 page faults per image
    and a third of the CPU time, 5 with this."""
    options = {M_MMAP_THRESHOLD: 32 << 20, M_TOP_PAD: pad}
    _mallopt(options, ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_"))


def configure_threads() -> int:
    """Cap torch's CPU threads at the CPUs this process may use (unless OMP_NUM_THREADS is set);
    returns the thread count in force."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        if 0 < allowed < torch.get_num_threads():
            torch.set_num_threads(allowed)
    return torch.get_num_threads()
