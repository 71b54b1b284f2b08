"""`clcpmt compare`: the comparison tables of a bench grid's results.csv, and seed-paired differences of two rows.

Per method and labeled fraction: the mean ± std over seeds, the seed-paired difference against reference methods
(with its standard error) and the share of the supervised → ceiling gap closed. Paired: a difference is taken seed by
seed (the same labeled draw for both methods), then averaged; its standard error is the sample std of the per-seed
differences / sqrt(n) (stats.py). Gap closed: the paired mean of (method − supervised) over (ceiling − supervised),
supervised at the method's labeled fraction on the same seeds, the ceiling (a row at all labels) the mean over its
seeds (usually one).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from .bench import columns_of
from .config import ConfigError
from .data.readers import DataError
from .stats import diff_cell, gap_closed, mean_std, paired_difference, signed


def headline_columns(rows: list[dict]) -> list[tuple[str, str]]:
    """The grid table's columns (bench.columns_of) without the srcmt protocol and the validation AUC."""
    return [c for c in columns_of(rows) if not c[0].startswith(("srcmt/", "val_"))]


def row_name(r: dict) -> str:
    """A row's name in the tables: the method, or method+variant."""
    return r["method"] + (f"+{r['variant']}" if r.get("variant") else "")


def runs_of(rows: list[dict], name: str, labeled: float) -> list[dict]:
    """The rows of `name` (method or method+variant) at one labeled fraction, seeds ascending."""
    mine = [r for r in rows if row_name(r) == name and float(r["labeled"]) == labeled]
    return sorted(mine, key=lambda r: int(r["seed"]))


def by_seed(rows: list[dict], name: str, labeled: float, metric: str) -> dict[int, float]:
    """{seed: value} of `metric` for the runs of `name` (method or method+variant) at one labeled fraction."""
    return {int(r["seed"]): float(r[metric]) for r in runs_of(rows, name, labeled) if r.get(metric)}


def groups(rows: list[dict]) -> list[tuple[str, float]]:
    """(name, labeled) of every row: labeled fractions from the largest, names in the grid's order."""
    names = list(dict.fromkeys(row_name(r) for r in rows))
    fractions = sorted({float(r["labeled"]) for r in rows}, reverse=True)
    return [(m, lab) for lab in fractions for m in names if by_seed(rows, m, lab, "standard/auc")]


def headline(rows: list[dict]) -> str:
    """Markdown: mean ± sample std over seeds of the headline metrics, one row per method and labeled fraction."""
    columns = headline_columns(rows)
    lines = [
        "| method | labeled | n | " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * (3 + len(columns)),
    ]
    for m, lab in groups(rows):
        cells = [mean_std(list(by_seed(rows, m, lab, key).values())) for key, _ in columns]
        lines.append(f"| {m} | {lab:g} | {len(by_seed(rows, m, lab, 'standard/auc'))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(rows: list[dict], metrics: list[str], references: list[str], ceiling: str = "supervised") -> str:
    """Markdown: per metric, the seed-paired difference against each reference (± SE) and the share of the gap from
    supervised (at the row's labeled fraction) to `ceiling` (a row name, at all labels) that the row closes."""
    head = ["method", "labeled"]
    for metric in metrics:
        name = dict(headline_columns(rows)).get(metric, metric)
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


def per_run(rows: list[dict]) -> str:
    """Markdown: one row per run (method, labeled fraction, seed) with the headline metrics, the validation macro AUC
    that chose its epoch and its wall seconds; a column no run has is left out, "-" for a value one run lacks."""
    columns = headline_columns(rows) + [("val_standard/auc", "val AUC"), ("wall_s", "wall s")]
    columns = [(k, h) for k, h in columns if any(r.get(k) for r in rows)]  # none has it: no column
    lines = [
        "| method | labeled | seed | " + " | ".join(h for _, h in columns) + " |",
        "|" + "---|" * (3 + len(columns)),
    ]
    for m, lab in groups(rows):
        for r in runs_of(rows, m, lab):
            cells = ["-" if not r.get(k) else f"{float(r[k]):.0f}" if k == "wall_s" else f"{float(r[k]):.2f}"
                     for k, _ in columns]  # fmt: skip
            lines.append(f"| {m} | {lab:g} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_results(path: str | Path, metrics: list[str]) -> list[dict]:
    """The rows of a bench results.csv, with every metric asked for among its columns."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        hint = "`clcpmt bench GRID` writes it when its runs finish, `clcpmt bench GRID --report` at any time"
        raise DataError(f"cannot read {path} ({e.strerror}): {hint}") from None
    if not rows or "method" not in rows[0]:
        raise DataError(f"{path}: no finished runs (or not a bench results.csv: no method column)")
    for metric in metrics:
        if metric not in rows[0]:
            numeric = [k for k in rows[0] if "/" in k]
            raise ConfigError(
                f"--metric {metric}: no such column in {path}; columns are e.g. {', '.join(numeric[:12])}"
            )
    return rows


def tables(path: str | Path, metrics: list[str], versus: list[str], ceiling: str = "supervised") -> str:
    """The whole `clcpmt compare` page: the headline table, then the paired differences and the gap closed."""
    rows = read_results(path, metrics)
    out = []
    if not any(row_name(r) == ceiling and float(r["labeled"]) == 1.0 for r in rows):
        out.append(f"(no '{ceiling}' run with all labels: no gap column; see --ceiling)")
    out += [f"{path} (the grid's table split: testing unless it says table_split: validation), teacher at the",
            "best validation epoch; mean ± sample std over seeds", "", headline(rows), "",
            "Seed-paired differences (mean ± standard error over the common seeds) and the share of the gap from",
            "supervised to supervised with all labels (means) that each method closes", "",
            differences(rows, metrics, versus, ceiling)]  # fmt: skip
    return "\n".join(out)


def pair(path: str | Path, a: str, b: str, metrics: list[str], labeled: float | None = None) -> str:
    """One line per metric: row a − row b seed by seed, their mean, SE and each row's mean ± std on those seeds."""
    rows = read_results(path, metrics)

    def seeds_of(name: str, metric: str) -> dict[int, float]:
        fractions = sorted({float(r["labeled"]) for r in rows if row_name(r) == name})
        if not fractions:
            raise ConfigError(f"--pair: no row '{name}' in {path} (rows are method or method+variant)")
        if labeled is None and len(fractions) > 1:
            raise ConfigError(f"--pair: '{name}' has runs at labeled fractions {fractions}: choose one with --labeled")
        return by_seed(rows, name, fractions[0] if labeled is None else labeled, metric)

    lines = []
    for metric in metrics:
        x, y = seeds_of(a, metric), seeds_of(b, metric)
        seeds = sorted(x.keys() & y.keys())
        mean, se, n = paired_difference(x, y)
        if n == 0:
            raise ConfigError(f"--pair: '{a}' (seeds {sorted(x)}) and '{b}' (seeds {sorted(y)}) share no seed")
        per_seed = " / ".join(signed(x[s] - y[s]) for s in seeds)
        line = f"{metric}: {a} - {b}, seeds {seeds}: {per_seed}; mean {signed(mean)}"
        if n > 1:  # the standard error of the mean difference, and each row's mean ± std on these seeds
            each = [f"{row} {statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"
                    for row, v in ((a, [x[s] for s in seeds]), (b, [y[s] for s in seeds]))]  # fmt: skip
            line += f" (SE {se:.2f}; {each[0]}, {each[1]})"
        lines.append(line)
    return "\n".join(lines)
