"""Paired-by-seed differences between two rows of a bench results.csv (row = method or method+variant).

    python benchmarks/paired.py runs/bench_synthetic_multilabel/results.csv clcp_mt+bal0.5 mean_teacher+bal0.5 \
        --metric standard/auc auc/spot
"""

from __future__ import annotations

import argparse
import csv
import statistics

from compare import by_seed as fraction_by_seed
from compare import row_name

from clcpmt.stats import paired_difference


def by_seed(rows: list[dict], name: str, metric: str, labeled: float | None) -> dict[int, float]:
    """{seed: metric} of the row `name` (method or method+variant) at one labeled fraction (None: its only one)."""
    fractions = sorted({float(r["labeled"]) for r in rows if row_name(r) == name})
    if not fractions:
        raise SystemExit(f"no row '{name}' in the results (rows are method or method+variant)")
    if labeled is None and len(fractions) > 1:
        raise SystemExit(f"'{name}' has runs at labeled fractions {fractions}: choose one with --labeled")
    return fraction_by_seed(rows, name, fractions[0] if labeled is None else labeled, metric)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metric", nargs="+", default=["standard/auc"])
    ap.add_argument("--labeled", type=float, default=None, help="labeled fraction (needed when a row has several)")
    args = ap.parse_args()
    with open(args.results, newline="") as f:
        rows = list(csv.DictReader(f))
    for metric in args.metric:
        if rows and metric not in rows[0]:
            numeric = [k for k in rows[0] if "/" in k]
            raise SystemExit(f"no column '{metric}' in {args.results}; columns are e.g. {', '.join(numeric[:12])}")
        a, b = by_seed(rows, args.a, metric, args.labeled), by_seed(rows, args.b, metric, args.labeled)
        seeds = sorted(a.keys() & b.keys())
        mean, se, n = paired_difference(a, b)
        if n == 0:
            raise SystemExit(f"'{args.a}' (seeds {sorted(a)}) and '{args.b}' (seeds {sorted(b)}) share no seed")
        per_seed = " / ".join(f"{a[s] - b[s]:+.2f}" for s in seeds)
        line = f"{metric}: {args.a} - {args.b}, seeds {seeds}: {per_seed}; mean {mean:+.2f}"
        if n > 1:  # the standard error of the mean difference, and each row's mean ± std on these seeds
            values = {args.a: [a[s] for s in seeds], args.b: [b[s] for s in seeds]}
            each = [f"{row} {statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for row, v in values.items()]
            line += f" (SE {se:.2f}; {each[0]}, {each[1]})"
        print(line)


if __name__ == "__main__":
    main()
