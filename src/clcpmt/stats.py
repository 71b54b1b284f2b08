"""The statistics of a comparison over seeds, in one place: mean ± std, the seed-paired difference with its
standard error, and the share of a gap a method closes. Pure functions of {seed: value} dicts and lists."""

from __future__ import annotations

import math
import statistics


def mean_std(values: list[float]) -> str:
    """ "mean ± sample std" of the values (2 decimals); one value alone; "-" for none."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Seed-paired a − b ({seed: value} each, the same labeled draw per seed): the mean of the per-seed differences
    over the seeds both have, its standard error (sample std of the differences / sqrt(n); nan below two seeds) and
    n. The one definition behind `clcpmt bench`, the report's comparison and `clcpmt compare`."""
    diff = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    if not diff:
        return math.nan, math.nan, 0
    se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
    return statistics.mean(diff), se, len(diff)


def signed(d: float) -> str:
    """A difference with its sign, 2 decimals: "+1.23", "-0.50"; one that rounds to zero is "+0.00", not "-0.00"."""
    return f"{round(d, 2) + 0.0:+.2f}"


def diff_cell(d: float, se: float, n: int) -> str:
    """A paired difference as a table cell: "+1.23 ± 0.45", "+1.23 (n = 1)" or "-" when no seed is shared."""
    if n == 0:
        return "-"
    return signed(d) + (f" ± {se:.2f}" if n > 1 else " (n = 1)")


def gap_closed(method: dict[int, float], floor: dict[int, float], ceiling: list[float]) -> float:
    """Share of the floor → ceiling gap a method closes: the seed-paired mean of (method − floor) over (mean of the
    ceiling's runs − mean of the floor on those seeds). nan without shared seeds, a ceiling or a positive gap."""
    common = sorted(method.keys() & floor.keys())
    if not common or not ceiling:
        return math.nan
    span = statistics.mean(ceiling) - statistics.mean(floor[s] for s in common)
    return statistics.mean(method[s] - floor[s] for s in common) / span if span > 0 else math.nan
