"""Audit a single-label run's pseudo-labels per class on the VALIDATION split: would the teacher label each class?

For the model that pseudo-labels in training (the teacher; the student for the FixMatch family) of each run's best
checkpoint and the thresholds its rule held then (CAPR, FlexMatch, FreeMatch or fixed; a run with `method.debias`
reads the debiased probabilities, as in training), per class c of the validation images:

- n: images of class c; share predicted: images the model predicts as c, over all images (true share beside it)
- recall: images of class c the model predicts as c
- p(true): mean probability the model gives class c on the images of class c (its confidence on the class)
- threshold: the rule's threshold for class c
- reached: images of class c predicted as c with confidence >= the threshold (a correct pseudo-label)
- precision: of the images predicted as c with confidence >= the threshold, those of class c

Mean over the runs given (their seeds). Validation only: this is where a change aimed at the tail is chosen.

    python benchmarks/tail_audit.py runs/bench_isic2018_cpu64/clcp_mt_lab0.2_seed{0,1,2}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from clcpmt.data.sources import prepare_data
from clcpmt.inference import predict_probs
from clcpmt.system import load_system, read_checkpoint

COLUMNS = ("n", "share predicted", "true share", "recall", "p(true)", "threshold", "reached", "precision")


def per_class(p: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(8, C): the COLUMNS above (shares in %, p(true) and threshold in 0-1). p: (N, C) probabilities, y: (N,) class
    ids, thresholds: (C,). A ratio with an empty denominator is nan."""
    num = p.shape[1]
    pred, conf = p.argmax(1), p.max(1)
    accepted = conf >= thresholds[pred]
    rows = []
    for c in range(num):
        own, said = y == c, pred == c
        kept = said & accepted
        rows.append(
            [
                own.sum(),
                100 * said.mean(),
                100 * own.mean(),
                100 * (said & own).sum() / own.sum() if own.any() else np.nan,
                p[own, c].mean() if own.any() else np.nan,
                thresholds[c],
                100 * (kept & own).sum() / own.sum() if own.any() else np.nan,
                100 * (kept & own).sum() / kept.sum() if kept.any() else np.nan,
            ]
        )
    return np.array(rows, dtype=float).T


def audit(run: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """(classes, (8, C)) for the run folder's best.ckpt on its validation images."""
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise SystemExit(f"{best} not found: a finished run keeps its best checkpoint there")
    module, cfg = load_system(best, announce=False)
    method = module.method
    if method.rule is None:
        raise SystemExit(f"{run}: method {cfg.method.name} has no pseudo-label thresholds to audit")
    data = prepare_data(cfg.data)
    if data.task != "single":
        raise SystemExit(f"{run}: a single-label run is needed (task is {data.task}); see pseudo_label_audit.py")
    idx = data.parts["validation"]
    who = method.recipe.pl_source  # the FixMatch family pseudo-labels with the student's weak view
    with torch.no_grad():
        p = predict_probs(module, data.images, idx)[who]
        if method.debias is not None:
            p = method.debias(p)
    ckpt = read_checkpoint(best)
    spe = ckpt["hyper_parameters"]["steps_per_epoch"]
    epoch = ckpt["epoch"] + (spe - 1) / spe  # the progress of the epoch's last step, whose thresholds the run held
    thresholds = method.rule.thresholds(epoch).numpy()
    return data.classes, per_class(p.numpy(), data.targets[idx], thresholds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    results = [audit(r) for r in args.runs]
    classes = results[0][0]
    table = np.stack([t for _, t in results])  # (R, 8, C)
    names = ", ".join(r.name for r in args.runs)
    print(f"validation, pseudo-labelling model of best.ckpt; mean over {len(args.runs)} run(s): {names}")
    print("| class | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for c, name in enumerate(classes):
        cells = []
        for k, col in enumerate(COLUMNS):
            v = np.nanmean(table[:, k, c]) if not np.isnan(table[:, k, c]).all() else np.nan
            digits = 0 if col == "n" else 2 if col in ("p(true)", "threshold") else 1
            cells.append("-" if np.isnan(v) else f"{v:.{digits}f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
