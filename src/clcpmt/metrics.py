"""Metrics of SPEC §6 as pure functions of (probabilities, targets), for both protocols.

The AUCs and the srcmt stat scores come from torchmetrics' functional API; the argmax confusion matrix is built
here because the ISIC2018 score counts ties in the argmax as wrong ("undecided"), which no library does.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import multiclass_auroc, multilabel_auroc, multilabel_stat_scores

SRCMT_THRESHOLD = 0.18


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-12), torch.zeros_like(a))


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
    per-class tensors (C,) auc_c, sens_c, spec_c, f1_c, and the confusion matrix (C, C).
    """
    probs, targets = probs.float(), targets.long()
    c = probs.shape[1]
    cm = confusion_matrix(argmax_with_ties(probs), targets, c)
    support = torch.bincount(targets, minlength=c).float()  # includes undecided rows
    tp = cm.diag().float()
    fp = cm.sum(0).float() - tp
    fn = support - tp
    tn = len(targets) - tp - fp - fn
    sens, spec = _safe_div(tp, support), _safe_div(tn, tn + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    auc_c = multiclass_auroc(probs, targets, num_classes=c, average=None)
    return {
        "auc": auc_c.mean(),
        "bacc": sens.mean(),
        "f1": f1.mean(),
        "auc_c": auc_c,
        "sens_c": sens,
        "spec_c": spec,
        "f1_c": f1,
        "confusion": cm,
    }


def srcmt_metrics(
    probs: torch.Tensor, targets: torch.Tensor, threshold: float = SRCMT_THRESHOLD
) -> dict[str, torch.Tensor]:
    """SRC-MT protocol: per class one-vs-rest, binarised at p >= threshold; unweighted means over classes.

    probs: (N, C); targets: (N,) class indices. Returns auc, acc, sens, spec, f1 (scalars).
    """
    probs, c = probs.float(), probs.shape[1]
    onehot = torch.nn.functional.one_hot(targets.long(), c)
    # torchmetrics binarises with p > threshold; SRC-MT uses p >= threshold, so shift by one ulp
    below = torch.nextafter(torch.tensor(threshold), torch.tensor(0.0)).item()
    tp, fp, tn, fn, _ = multilabel_stat_scores(probs, onehot, num_labels=c, threshold=below, average=None).float().T
    auc = multilabel_auroc(probs, onehot, num_labels=c, average=None)
    return {
        "auc": auc.mean(),
        "acc": ((tp + tn) / (tp + tn + fp + fn)).mean(),
        "sens": _safe_div(tp, tp + fn).mean(),
        "spec": _safe_div(tn, tn + fp).mean(),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn).mean(),
    }


def format_report(probs: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...], title: str) -> str:
    """A plain-text report: both protocols, the per-class table and the confusion matrix."""
    s, m = standard_metrics(probs, targets), srcmt_metrics(probs, targets)
    lines = [
        f"== {title}: {len(targets)} images",
        f"standard  macro AUC {100 * s['auc']:.2f}  balanced acc {100 * s['bacc']:.2f}  macro F1 {100 * s['f1']:.2f}",
        "srcmt     " + "  ".join(f"{k.upper()} {100 * v:.2f}" for k, v in m.items()),
        f"{'class':<8}{'n':>6}{'AUC':>8}{'sens':>8}{'spec':>8}{'F1':>8}",
    ]
    support = torch.bincount(targets.long(), minlength=len(classes))
    for i, name in enumerate(classes):
        lines.append(
            f"{name:<8}{int(support[i]):>6}"
            + "".join(f"{100 * s[k][i]:>8.2f}" for k in ("auc_c", "sens_c", "spec_c", "f1_c"))
        )
    lines.append("confusion (rows truth, columns prediction): " + " ".join(classes))
    lines += [
        f"{name:<8}" + "".join(f"{int(v):>7}" for v in row) for name, row in zip(classes, s["confusion"], strict=True)
    ]
    return "\n".join(lines)
