"""Audit a multi-label run's teacher on its UNLABELED training images, per finding, with their hidden labels.

For each finding: the share of its positives with p >= 0.5 (the lowest a CAPR positive threshold goes by default),
the share of its positives with p <= 1 - tau_negative (given a NEGATIVE pseudo-label: pushed to 0), and the share
of its negatives with p <= 1 - tau_negative. Teacher of the run's last checkpoint (the end of training); mean over
the runs given. Only for data whose unlabeled images have known labels (synthetic, benchmarks). `--low 0.05`
counts at p <= 0.05 whatever the run's tau_negative (compare methods without negatives, or without CAPR).

    python benchmarks/pseudo_label_audit.py runs/bench_synthetic_multilabel/clcp_mt_lab0.2_seed{0,1,2,3,4}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clcpmt.data.sources import prepare_data
from clcpmt.inference import predict_probs
from clcpmt.system import load_system


def audit(run: Path, low: float | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """(findings, (3, C) shares): positives p >= 0.5; positives p <= low; negatives p <= low.

    low: the run's negative threshold 1 - tau_negative unless given (to compare runs without negatives)."""
    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise SystemExit(
            f"{last} not found: the audit reads the end of training, and a finished `clcpmt bench` run keeps only "
            "best.ckpt unless its grid file sets keep_last: true"
        )
    module, cfg = load_system(last)
    data = prepare_data(cfg.data)
    if data.task != "multi":
        raise SystemExit(f"{run}: a multi-label run is needed (task is {data.task})")
    idx = data.parts["unlabeled"]
    p = predict_probs(module, data.images, idx)["teacher"].numpy()
    low = 1.0 - cfg.method.tau_negative if low is None else low
    return data.classes, shares(p, data.targets[idx] > 0.5, low)  # hidden labels: counted here, never trained on


def shares(p: np.ndarray, pos: np.ndarray, low: float) -> np.ndarray:
    """(3, C): share of positives at p >= 0.5, of positives at p <= low, of negatives at p <= low. p, pos: (N, C)."""
    below = p <= low
    return np.stack(
        [
            ((p >= 0.5) & pos).sum(0) / pos.sum(0).clip(1),
            (below & pos).sum(0) / pos.sum(0).clip(1),
            (below & ~pos).sum(0) / (~pos).sum(0).clip(1),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--low", type=float, help="negative threshold to count at (default: each run's 1 - tau_negative)")
    args = ap.parse_args()
    results = [audit(r, args.low) for r in args.runs]
    classes = results[0][0]
    table = 100 * np.stack([s for _, s in results])  # (R, 3, C)
    print(f"{len(args.runs)} run(s): {', '.join(r.name for r in args.runs)}")
    print("| finding | positives at p ≥ 0.5 | positives at p ≤ 1 − τ⁻ (pushed to 0) | negatives at p ≤ 1 − τ⁻ |")
    print("|---|---|---|---|")
    for c, name in enumerate(classes):
        cells = [f"{table[:, k, c].mean():.1f} %" for k in range(3)]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
