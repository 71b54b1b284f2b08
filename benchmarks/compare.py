"""The comparison table of a bench grid: per method and labeled fraction the mean ± std over seeds, the seed-paired
difference against a reference method (and its standard error), and the share of the supervised gap closed.

    python benchmarks/compare.py runs/bench_isic2018_cpu64/results.csv --ceiling supervised+bl48
    python benchmarks/compare.py RESULTS.csv --metric standard/bacc --versus supervised

Paired: a difference is taken seed by seed (the same labeled draw for both methods), then averaged; its standard
error is the sample std of the per-seed differences / sqrt(n). Gap closed: the paired mean of (method − supervised)
over (ceiling − supervised), supervised at the method's labeled fraction on the same seeds, the ceiling (`--ceiling`,
a row at all labels) the mean over its seeds (usually one).
"""

from __future__ import annotations

import argparse
import csv
import math

from clcpmt.bench import COLUMNS
from clcpmt.stats import diff_cell, gap_closed, mean_std, paired_difference

# the grid table's headline columns (bench.COLUMNS), without the srcmt protocol and the validation AUC
HEADLINE = [c for c in COLUMNS if not c[0].startswith(("srcmt/", "val_"))]


def row_name(r: dict) -> str:
    """A row's name in the tables: the method, or method+variant."""
    return r["method"] + (f"+{r['variant']}" if r.get("variant") else "")


def by_seed(rows: list[dict], name: str, labeled: float, metric: str) -> dict[int, float]:
    """{seed: value} of `metric` for the runs of `name` (method or method+variant) at one labeled fraction."""
    out = {}
    for r in rows:
        if row_name(r) == name and float(r["labeled"]) == labeled and r.get(metric):
            out[int(r["seed"])] = float(r[metric])
    return out


def groups(rows: list[dict]) -> list[tuple[str, float]]:
    """(name, labeled) of every row: labeled fractions from the largest, names in the grid's order."""
    names = list(dict.fromkeys(row_name(r) for r in rows))
    fractions = sorted({float(r["labeled"]) for r in rows}, reverse=True)
    return [(m, lab) for lab in fractions for m in names if by_seed(rows, m, lab, "standard/auc")]


def headline(rows: list[dict]) -> str:
    """Markdown: mean ± sample std over seeds of the headline metrics, one row per method and labeled fraction."""
    lines = [
        "| method | labeled | n | " + " | ".join(h for _, h in HEADLINE) + " |",
        "|" + "---|" * (3 + len(HEADLINE)),
    ]
    for m, lab in groups(rows):
        cells = [mean_std(list(by_seed(rows, m, lab, key).values())) for key, _ in HEADLINE]
        lines.append(f"| {m} | {lab:g} | {len(by_seed(rows, m, lab, 'standard/auc'))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(rows: list[dict], metrics: list[str], references: list[str], ceiling: str = "supervised") -> str:
    """Markdown: per metric, the seed-paired difference against each reference (± SE) and the share of the gap from
    supervised (at the row's labeled fraction) to `ceiling` (a row name, at all labels) that the row closes."""
    head = ["method", "labeled"]
    for metric in metrics:
        name = dict(HEADLINE).get(metric, metric)
        head += [f"Δ{name} vs {ref}" for ref in references] + [f"{name} gap closed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, lab in groups(rows):
        if lab == 1.0:
            continue
        cells = [m, f"{lab:g}"]
        for metric in metrics:
            mine = by_seed(rows, m, lab, metric)
            for ref in references:
                cells.append("" if ref == m else diff_cell(*paired_difference(mine, by_seed(rows, ref, lab, metric))))
            floor = by_seed(rows, "supervised", lab, metric)
            top = list(by_seed(rows, ceiling, 1.0, metric).values())
            gap = gap_closed(mine, floor, top) if m != "supervised" else math.nan
            cells.append(f"{100 * gap:.0f} %" if math.isfinite(gap) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a bench grid's results.csv")
    ap.add_argument("--metric", nargs="+", default=["standard/bacc", "standard/f1", "standard/auc"])
    ap.add_argument("--versus", nargs="+", default=["mean_teacher", "supervised"], help="reference methods")
    ap.add_argument("--ceiling", default="supervised", help="the all-labels row of the gap (method or method+variant)")
    args = ap.parse_args()
    try:
        with open(args.results, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        hint = "`clcpmt bench GRID` writes it when its runs finish, `clcpmt bench GRID --report` at any time"
        raise SystemExit(f"cannot read {args.results} ({e.strerror}): {hint}") from None
    if not rows:
        raise SystemExit(f"{args.results}: no finished runs")
    for metric in args.metric:
        if metric not in rows[0]:
            raise SystemExit(f"no column '{metric}' in {args.results}")
    if not any(row_name(r) == args.ceiling and float(r["labeled"]) == 1.0 for r in rows):
        print(f"(no '{args.ceiling}' run with all labels: no gap column; see --ceiling)")
    print(f"{args.results} (the grid's table split: testing unless it says table_split: validation), teacher at the")
    print("best validation epoch; mean ± sample std over seeds\n")
    print(headline(rows))
    print("\nSeed-paired differences (mean ± standard error over the common seeds) and the share of the gap from")
    print("supervised to supervised with all labels (means) that each method closes\n")
    print(differences(rows, args.metric, args.versus, args.ceiling))


if __name__ == "__main__":
    main()
