"""`clcpmt audit RUN...`: would the run's pseudo-labeller label each class, and rightly? Counted with labels the
method never trained on; mean over the runs given (their seeds).

Single-label runs, on the VALIDATION split (where a change aimed at the tail is chosen), for the model that
pseudo-labels in training (the teacher; the student's weak view for the FixMatch family) of each run's best
checkpoint and the thresholds its rule held then (CAPR, FlexMatch, FreeMatch or fixed; a run with `method.debias`
reads the debiased probabilities, as in training); per class c (COLUMNS):

- n: images of class c; share predicted: images predicted as c over all images (true share beside it)
- recall: images of c predicted as c; p(true): mean probability given to c on the images of c
- threshold: the rule's threshold for c; reached: images of c predicted as c with confidence >= the threshold (a
  correct pseudo-label); precision: of the images predicted as c with confidence >= the threshold, those of c

Multi-label runs, on the UNLABELED training images with their hidden labels (synthetic data, benchmarks), for the
teacher of the run's last checkpoint (the end of training), per finding (MULTI_COLUMNS): the share of its positives
with p >= 0.5 (the lowest a CAPR positive threshold goes by default), of its positives with p <= 1 - tau_negative
(given a NEGATIVE pseudo-label: pushed to 0), and of its negatives with p <= 1 - tau_negative. `low` counts at
p <= low whatever the run's tau_negative (to compare methods without negatives, or without CAPR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import CheckpointError, ConfigError
from .data.sources import prepare_data
from .inference import predict_probs
from .system import load_system, read_checkpoint, run_data

COLUMNS = ("n", "share predicted", "true share", "recall", "p(true)", "threshold", "reached", "precision")
MULTI_COLUMNS = ("positives at p ≥ 0.5", "positives at p ≤ {low} (pushed to 0)", "negatives at p ≤ {low}")


def per_class(p: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(8, C): the COLUMNS (shares in %, p(true) and threshold in 0-1). p: (N, C) probabilities, y: (N,) class ids,
    thresholds: (C,). A ratio with an empty denominator is nan."""
    pred, conf = p.argmax(1), p.max(1)
    accepted = conf >= thresholds[pred]
    rows = []
    for c in range(p.shape[1]):
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


def shares(p: np.ndarray, pos: np.ndarray, low: float) -> np.ndarray:
    """(3, C) in 0-1: positives at p >= 0.5, positives at p <= low, negatives at p <= low. p, pos: (N, C)."""
    below = p <= low
    return np.stack(
        [
            ((p >= 0.5) & pos).sum(0) / pos.sum(0).clip(1),
            (below & pos).sum(0) / pos.sum(0).clip(1),
            (below & ~pos).sum(0) / (~pos).sum(0).clip(1),
        ]
    )


def _checkpoint(run: Path, name: str, why: str) -> Path:
    path = run / "checkpoints" / f"{name}.ckpt"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {why}")
    return path


def audit_run(run: str | Path, low: float | None = None) -> tuple[str, tuple[str, ...], np.ndarray]:
    """(task, classes, table) of one run folder: task "single" with per_class's (8, C) on validation, or "multi"
    with shares' (3, C) on the unlabeled images (at p <= low; default the run's 1 - tau_negative)."""
    run = Path(run)
    first = next((p for p in (run / "checkpoints" / f"{n}.ckpt" for n in ("last", "best")) if p.is_file()), None)
    if first is None:
        raise CheckpointError(f"{run / 'checkpoints' / 'best.ckpt'} not found: is it a finished run folder?")
    ckpt = read_checkpoint(first)
    task = ckpt["hyper_parameters"]["task"]  # which checkpoint to build: one system, not two
    if task == "multi":
        path = _checkpoint(run, "last", "the multi-label audit reads the end of training, and a finished `clcpmt "
                           "bench` run keeps only best.ckpt unless its grid file sets keep_last: true")  # fmt: skip
    elif low is not None:
        raise ConfigError(f"{run}: --low is for multi-label runs (negative pseudo-labels); this one is single-label")
    else:
        path = _checkpoint(run, "best", "the single-label audit reads the best validation epoch")
    if path != first:
        ckpt = read_checkpoint(path)
    module, cfg = load_system(path, announce=False, ckpt=ckpt)
    data = prepare_data(run_data(cfg, run))  # the run's own split files: exactly its unlabeled / validation images
    if task == "multi":
        idx = data.parts["unlabeled"]
        p = predict_probs(module, data.images, idx)["teacher"].numpy()
        low = 1.0 - cfg.method.tau_negative if low is None else low
        return "multi", data.classes, shares(p, data.targets[idx] > 0.5, low)  # hidden labels: counted, not trained
    method = module.method
    if method.rule is None:
        raise ConfigError(f"{run}: method {cfg.method.name} has no pseudo-label thresholds to audit")
    idx = data.parts["validation"]
    with torch.no_grad():
        p = predict_probs(module, data.images, idx)[method.recipe.pl_source]
        if method.debias is not None:
            p = method.debias(p)
    spe = ckpt["hyper_parameters"]["steps_per_epoch"]
    epoch = ckpt["epoch"] + (spe - 1) / spe  # the progress of the epoch's last step, whose thresholds the run held
    return "single", data.classes, per_class(p.numpy(), data.targets[idx], method.rule.thresholds(epoch).numpy())


def audit_table(runs: list[str | Path], low: float | None = None) -> str:
    """The Markdown table of `clcpmt audit`: the mean over the runs (one task and one class list)."""
    results = [audit_run(r, low) for r in runs]
    tasks, classes = {t for t, _, _ in results}, {c for _, c, _ in results}
    if len(tasks) > 1 or len(classes) > 1:
        raise ConfigError(f"audit: the runs {', '.join(map(str, runs))} differ in task or classes; audit them apart")
    task, names = results[0][0], results[0][1]
    table = np.stack([t for _, _, t in results])  # (R, K, C)
    runs_text = f"mean over {len(runs)} run(s): {', '.join(Path(r).name for r in runs)}"
    if task == "multi":
        header = " | ".join(MULTI_COLUMNS).format(low="1 − τ⁻" if low is None else low)
        lines = [f"unlabeled training images, teacher of last.ckpt; {runs_text}",
                 f"| finding | {header} |", "|---" * (len(MULTI_COLUMNS) + 1) + "|"]  # fmt: skip
        for c, name in enumerate(names):
            lines.append(f"| {name} | " + " | ".join(f"{100 * table[:, k, c].mean():.1f} %" for k in range(3)) + " |")
        return "\n".join(lines)
    lines = [f"validation, pseudo-labelling model of best.ckpt; {runs_text}",
             "| class | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for c, name in enumerate(names):
        cells = []
        for k, col in enumerate(COLUMNS):
            v = np.nanmean(table[:, k, c]) if not np.isnan(table[:, k, c]).all() else np.nan
            digits = 0 if col == "n" else 2 if col in ("p(true)", "threshold") else 1
            cells.append("-" if np.isnan(v) else f"{v:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
