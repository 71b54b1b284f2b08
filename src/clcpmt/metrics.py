"""Metrics of method.md §6 as pure functions of (probabilities, targets), for both protocols.

The AUCs and the srcmt stat scores come from torchmetrics' functional API; the argmax confusion matrix is built
here because the ISIC2018 score counts ties in the argmax as wrong ("undecided"), which no library does.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_auroc, multilabel_auroc, multilabel_stat_scores

SRCMT_THRESHOLD = 0.18
# a class absent from the targets is handled here (NaN, left out of the means, named in the report)
warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets", module="torchmetrics")


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))


def _undefined_as_nan(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den is 0 (a recall of a class absent from the targets, an F1 of a class neither present
    nor predicted): means over classes then leave it out, as scikit-learn's balanced accuracy and macro F1 do."""
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.full_like(num, float("nan")))


def absent_classes(targets: torch.Tensor, num_classes: int) -> list[int]:
    """Classes with no example in targets: (N,) class indices or (N, C) 0/1."""
    support = torch.bincount(targets.long(), minlength=num_classes) if targets.ndim == 1 else targets.sum(0)
    return [c for c in range(num_classes) if support[c] == 0]


def _defined_auc(auc_c: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Per-class AUC with NaN where a class has no positive or no negative (AUC undefined; torchmetrics says 0)."""
    positives = onehot.sum(0)
    return torch.where((positives > 0) & (positives < len(onehot)), auc_c, torch.full_like(auc_c, float("nan")))


def argmax_with_ties(probs: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N,) argmax, -1 where the maximum is attained more than once (ISIC: "undecided", always wrong)."""
    top = probs.max(dim=1, keepdim=True).values
    ties = (probs == top).sum(dim=1) > 1
    return torch.where(ties, torch.full_like(ties, -1, dtype=torch.long), probs.argmax(dim=1))


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = truth, columns = prediction; undecided (-1) predictions are left out."""
    keep = preds >= 0
    flat = targets[keep] * num_classes + preds[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def standard_metrics(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Single-label standard protocol. probs: (N, C) softmax; targets: (N,) class indices.

    Returns scalars auc (macro one-vs-rest), bacc (ISIC2018 balanced multiclass accuracy), f1 (macro),
    per-class tensors (C,) auc_c, sens_c, spec_c, f1_c, and the confusion matrix (C, C). As scikit-learn: a class
    absent from the targets has no recall (NaN) and is left out of bacc; one neither present nor predicted has no F1
    (NaN) and is left out of the macro F1; AUC leaves out classes without positives.
    """
    probs, targets = probs.float(), targets.long()
    c = probs.shape[1]
    cm = confusion_matrix(argmax_with_ties(probs), targets, c)
    support = torch.bincount(targets, minlength=c).float()  # includes undecided rows
    tp = cm.diag().float()
    fp = cm.sum(0).float() - tp
    fn = support - tp
    tn = len(targets) - tp - fp - fn
    sens, spec = _undefined_as_nan(tp, support), _safe_div(tn, tn + fp)
    f1 = _undefined_as_nan(2 * tp, 2 * tp + fp + fn)
    auc_c = _defined_auc(multiclass_auroc(probs, targets, num_classes=c, average=None), F.one_hot(targets, c))
    return {
        "auc": auc_c.nanmean(),
        "bacc": sens.nanmean(),
        "f1": f1.nanmean(),
        "auc_c": auc_c,
        "sens_c": sens,
        "spec_c": spec,
        "f1_c": f1,
        "confusion": cm,
    }


def f1_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-finding threshold that maximises F1 (choose it on validation). probs, targets: (N, C) -> (C,)."""
    p_sorted, order = probs.float().sort(dim=0, descending=True)
    y = targets.float().gather(0, order)  # (N, C) labels in descending-probability order
    tp = y.cumsum(0)
    f1 = 2 * tp / (torch.arange(1, len(y) + 1, device=y.device)[:, None] + y.sum(0)).clamp_min(1)
    return p_sorted.gather(0, f1.argmax(0, keepdim=True))[0]


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Multi-label standard protocol (ChestX-ray14). probs, targets: (N, C); thresholds (C,) default 0.5.

    Returns auc (mean of per-finding AUCs, the headline), f1 (mean of per-finding F1 at the thresholds) and the
    per-finding tensors auc_c, f1_c, sens_c, spec_c, thresholds. A finding without positives has no AUC or recall
    (NaN), and no F1 unless it was predicted; the means leave undefined values out.
    """
    probs, targets = probs.float(), targets.float()
    c = probs.shape[1]
    thr = torch.full((c,), 0.5) if thresholds is None else thresholds.float()
    thr = thr.to(probs.device)  # thresholds chosen on CPU, probabilities on the GPU
    pred = (probs >= thr[None, :]).float()
    tp, fp = (pred * targets).sum(0), (pred * (1 - targets)).sum(0)
    fn, tn = ((1 - pred) * targets).sum(0), ((1 - pred) * (1 - targets)).sum(0)
    auc_c = _defined_auc(multilabel_auroc(probs, targets.int(), num_labels=c, average=None), targets)
    f1 = _undefined_as_nan(2 * tp, 2 * tp + fp + fn)
    sens, spec = _undefined_as_nan(tp, tp + fn), _safe_div(tn, tn + fp)
    return {"auc": auc_c.nanmean(), "f1": f1.nanmean(), "auc_c": auc_c, "f1_c": f1, "sens_c": sens, "spec_c": spec,
            "thresholds": thr}  # fmt: skip


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, task: str = "single") -> dict[str, torch.Tensor]:
    """The standard protocol of `task`: standard_metrics (single-label) or multilabel_metrics (multi-label)."""
    return standard_metrics(probs, targets) if task == "single" else multilabel_metrics(probs, targets)


def srcmt_metrics(
    probs: torch.Tensor, targets: torch.Tensor, threshold: float = SRCMT_THRESHOLD
) -> dict[str, torch.Tensor]:
    """SRC-MT protocol: per class one-vs-rest, binarised at p >= threshold; unweighted means over classes.

    probs: (N, C); targets: (N,) class indices, or (N, C) 0/1 for multi-label. Returns auc, acc, sens, spec, f1.
    As SRC-MT's reference code (scikit-learn per class): a class absent from the targets counts 0 in the sensitivity
    and F1 means, so the numbers stay comparable with the published tables; AUC leaves it out.
    """
    probs, c = probs.float(), probs.shape[1]
    onehot = targets.long() if targets.ndim == 2 else torch.nn.functional.one_hot(targets.long(), c)
    # torchmetrics binarises with p > threshold; SRC-MT uses p >= threshold, so shift by one ulp
    below = torch.nextafter(torch.tensor(threshold), torch.tensor(0.0)).item()
    tp, fp, tn, fn, _ = multilabel_stat_scores(probs, onehot, num_labels=c, threshold=below, average=None).float().T
    auc = _defined_auc(multilabel_auroc(probs, onehot, num_labels=c, average=None), onehot)
    return {
        "auc": auc.nanmean(),
        "acc": ((tp + tn) / (tp + tn + fp + fn)).mean(),
        "sens": _safe_div(tp, tp + fn).mean(),
        "spec": _safe_div(tn, tn + fp).mean(),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn).mean(),
    }


def format_report(
    probs: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...], title: str,
    thresholds: torch.Tensor | None = None,
) -> str:  # fmt: skip
    """A plain-text report: both protocols, the per-class table and (single-label) the confusion matrix.

    Multi-label: F1 at `thresholds` (chosen on validation; 0.5 when None); srcmt binarises at 0.5.
    """
    multi = targets.ndim == 2
    s = multilabel_metrics(probs, targets, thresholds) if multi else standard_metrics(probs, targets)
    m = srcmt_metrics(probs, targets, 0.5 if multi else SRCMT_THRESHOLD)
    if multi:
        where = "validation-chosen thresholds" if thresholds is not None else "threshold 0.5"
        head = f"standard  mean AUC {100 * s['auc']:.2f}  mean F1 {100 * s['f1']:.2f} ({where})"
        support = targets.sum(0).long()
    else:
        head = (f"standard  macro AUC {100 * s['auc']:.2f}  balanced acc {100 * s['bacc']:.2f}  "
                f"macro F1 {100 * s['f1']:.2f}")  # fmt: skip
        support = torch.bincount(targets.long(), minlength=len(classes))
    w = max(8, max(len(c) for c in classes) + 1)
    srcmt = "srcmt     " + "  ".join(f"{k.upper()} {100 * v:.2f}" for k, v in m.items())
    lines = [f"== {title}: {len(targets)} images", head, srcmt,
             f"{'class':<{w}}{'n':>6}{'AUC':>8}{'sens':>8}{'spec':>8}{'F1':>8}"]  # fmt: skip
    for i, name in enumerate(classes):
        cells = "".join(f"{100 * s[k][i]:>8.2f}" for k in ("auc_c", "sens_c", "spec_c", "f1_c"))
        lines.append(f"{name:<{w}}{int(support[i]):>6}" + cells.replace("nan", "  -"))
    absent = absent_classes(targets, len(classes))
    if absent:
        names = ", ".join(classes[i] for i in absent)
        lines.append(f"warning: no {names} in these targets: left out of the standard protocol's means (AUC, "
                     "balanced accuracy as scikit-learn's, F1 where never predicted); srcmt counts them 0")  # fmt: skip
    if not multi:
        lines.append("confusion (rows truth, columns prediction): " + " ".join(classes))
        lines += [
            f"{n:<{w}}" + "".join(f"{int(v):>7}" for v in row) for n, row in zip(classes, s["confusion"], strict=True)
        ]
    return "\n".join(lines)
