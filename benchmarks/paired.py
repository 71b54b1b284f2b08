"""Paired-by-seed differences between two rows of a bench results.csv (row = method or method+variant).

    python benchmarks/paired.py runs/bench_synthetic_multilabel/results.csv clcp_mt+bal0.5 mean_teacher+bal0.5 \
        --metric standard/auc auc/spot
"""

from __future__ import annotations

import argparse
import csv
import statistics


def by_seed(rows: list[dict], name: str, metric: str) -> dict[int, float]:
    out = {
        int(r["seed"]): float(r[metric])
        for r in rows
        if r["method"] + (f"+{r['variant']}" * bool(r["variant"])) == name
    }
    if not out:
        raise SystemExit(f"no row '{name}' in the results (rows are method or method+variant)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--metric", nargs="+", default=["standard/auc"])
    args = ap.parse_args()
    with open(args.results, newline="") as f:
        rows = list(csv.DictReader(f))
    for metric in args.metric:
        a, b = by_seed(rows, args.a, metric), by_seed(rows, args.b, metric)
        seeds = sorted(a.keys() & b.keys())
        diff = [a[s] - b[s] for s in seeds]
        per_seed = " / ".join(f"{d:+.2f}" for d in diff)
        print(f"{metric}: {args.a} - {args.b}, seeds {seeds}: {per_seed}; mean {statistics.mean(diff):+.2f}")


if __name__ == "__main__":
    main()
