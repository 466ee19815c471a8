"""How much memory a run's images may take, checked before anything large is allocated.

Images are held as 8-bit tensors (one byte per pixel value: a 128x128 colour image is 48 KiB),
train and test splits of both datasets. Every loader asks the run's `MemoryBudget` for the bytes
it is about to allocate, before allocating them; a request beyond the budget is a `DataError`
that names the dataset, the size, and the flags that change it, never an allocation traceback
halfway through decoding.

    python -c "from jadecli.data.memory import MemoryBudget; print(MemoryBudget.resolve(None))"
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from jadecli.errors import DataError

DEFAULT_FRACTION = 0.8  # of the memory available when the run starts


def available_bytes() -> int | None:
    """Memory the system could give this process now (Linux: MemAvailable), else its RAM."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gb(nbytes: float) -> str:
    """Bytes as decimal gigabytes, the unit of --memory-budget."""
    return f"{nbytes / 1e9:,.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:,.1f} MB"


@dataclass
class MemoryBudget:
    """Bytes the run's images may take (`limit`), and how many are claimed so far."""

    limit: float
    source: str  # where the limit came from, for messages
    used: int = 0

    @classmethod
    def resolve(cls, budget_gb: float | None) -> MemoryBudget:
        """`--memory-budget GB`, or by default 80% of the memory available now."""
        if budget_gb is not None:
            return cls(budget_gb * 1e9, f"--memory-budget {budget_gb:g}")
        avail = available_bytes()
        if avail is None:
            return cls(math.inf, "no limit: this system does not report its memory")
        limit = DEFAULT_FRACTION * avail
        return cls(limit, f"the default --memory-budget, 80% of the {gb(avail)} available")

    def fits(self, count: int, shape: tuple[int, int, int]) -> bool:
        """Whether `count` 8-bit images of `shape` (C, H, W) fit in what is left."""
        c, h, w = shape
        return self.used + count * c * h * w <= self.limit

    def claim(self, count: int, shape: tuple[int, int, int], what: str, size_flag: str) -> None:
        """Reserve `count` 8-bit images of `shape` (C, H, W) for `what` (e.g. "--auxiliary
        folder:scans"), or raise a one-line DataError naming the size and the options."""
        c, h, w = shape
        need = count * c * h * w
        if not self.fits(count, shape):
            left = max(self.limit - self.used, 0)
            raise DataError(
                f"{what}: {count:,} images of {c}x{h}x{w} need {gb(need)} as 8-bit images, more "
                f"than the {gb(left)} left of the memory budget ({self.source}); pass a smaller "
                f"{size_flag}, fewer images, or a larger --memory-budget"
            )
        self.used += need
