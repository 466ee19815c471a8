"""Is a per-seed difference between two recipes more than seed noise?

The benchmarks run every arm with the same seeds, and a seed fixes the labeled subset, the
initial weights and the batch order, so the arms are compared seed by seed: the differences
d_1..d_n (same seed) are the data, and a Student t interval on their mean says whether zero is
a plausible true difference. With 3 to 5 seeds the interval is wide; "within noise" is the
honest reading of most small margins.

    python -m benchmarks.stats 1.37 0.63 7.16

prints `+3.05 points [95% CI -5.83, +11.94], n=3, p=0.28: not significant`.
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

from scipy.stats import t as student_t

# `mean ± sample sd` cells: one implementation, the one `jade summarize` writes its tables with
# (the benchmark scripts import it from here)


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval for the mean of paired differences.

    With one difference there is no spread to estimate: sd, half_width, lo, hi, t_stat and
    p_value are None and the difference is never called significant.
    """

    n: int
    mean: float
    sd: float | None
    half_width: float | None
    lo: float | None
    hi: float | None
    t_stat: float | None
    p_value: float | None
    level: float = 0.95
    significant: bool = False  # the interval excludes 0 (equivalently p < 1 - level)


def paired_ci(diffs: list[float], level: float = 0.95) -> Interval:
    """Student t interval (n - 1 degrees of freedom) for the mean of per-seed differences."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    values = [float(d) for d in diffs]
    if not values:
        raise ValueError("paired_ci needs at least one difference")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"paired_ci needs finite differences, got {values}")
    n = len(values)
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(n, mean, None, None, None, None, None, None, level, False)
    sd = statistics.stdev(values)
    se = sd / math.sqrt(n)
    half = float(student_t.ppf(0.5 + level / 2.0, n - 1)) * se
    if se == 0.0:
        # Identical differences: no noise at all, so any non-zero mean is certain and a zero
        # mean is no evidence of a difference (t would be 0/0).
        t_stat = math.copysign(math.inf, mean) if mean else math.nan
        p = 0.0 if mean else 1.0
    else:
        t_stat = mean / se
        p = float(2.0 * student_t.sf(abs(t_stat), n - 1))  # two-sided
    lo, hi = mean - half, mean + half
    return Interval(n, mean, sd, half, lo, hi, t_stat, p, level, lo > 0.0 or hi < 0.0)


def verdict(interval: Interval) -> str:
    """One word for a table cell: significant, within noise, or why there is no verdict."""
    if interval.n < 2:
        return "one seed"
    return "significant" if interval.significant else "within noise"


def format_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    # two significant digits are all that a handful of seeds supports
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def format_ci(interval: Interval) -> str:
    if interval.lo is None or interval.hi is None:
        return "-"
    return f"[{interval.lo:+.2f}, {interval.hi:+.2f}]"


def describe(interval: Interval, unit: str = "points") -> str:
    """E.g. `+3.05 points [95% CI -5.83, +11.94], n=3, p=0.28: not significant`."""
    value = f"{interval.mean:+.2f}" + (f" {unit}" if unit else "")
    if interval.n < 2 or interval.lo is None or interval.hi is None:
        return f"{value}, n={interval.n}: no interval (needs 2 or more seeds)"
    p = format_p(interval.p_value)
    p = f"p{p}" if p.startswith("<") else f"p={p}"
    word = "significant" if interval.significant else "not significant"
    return (
        f"{value} [{interval.level * 100:g}% CI {interval.lo:+.2f}, {interval.hi:+.2f}], "
        f"n={interval.n}, {p}: {word}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("diffs", nargs="+", type=float, help="per-seed differences")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--unit", default="points")
    args = ap.parse_args(argv)
    print(describe(paired_ci(args.diffs, args.level), args.unit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
