"""Every loss of method.md §3 as a pure function (tensors in, tensor out), plus the ramp-up w(t).

`task` is "single" (softmax, class indices) or "multi" (sigmoid, 0/1 matrices): a property of the data, not a fork.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .thresholds import all_gather_rows


def probabilities(logits: torch.Tensor, task: str = "single") -> torch.Tensor:
    """logits: (B, C) -> softmax (single-label) or sigmoid (multi-label) probabilities, in fp32."""
    logits = logits.float()
    return logits.softmax(dim=1) if task == "single" else logits.sigmoid()


def class_prior(targets: torch.Tensor, num_classes: int, task: str = "single") -> torch.Tensor:
    """Labeled-set prior pi (C,): share of each class (single) or of positives per finding (multi).

    Counts are kept between 1 and N - 1 images so that log pi and log(1 - pi) stay finite for a class with no
    (or only) labeled examples. targets: (N,) class indices or (N, C) 0/1.
    """
    n = targets.shape[0]
    counts = torch.bincount(targets, minlength=num_classes) if task == "single" else targets.float().sum(0)
    return counts.float().clamp(1, max(n - 1, 1)) / n


def supervised_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: str = "single",
    prior: torch.Tensor | None = None,
    balance: str = "none",
    strength: float = 1.0,
) -> torch.Tensor:
    """L_sup (method.md §3.1): CE on class indices (B,) or BCE on 0/1 targets (B, C); logits: (B, C).

    the method's optional class balancing, from the labeled prior pi (C,) (`class_prior`), with strength s:
    - "weights": class c weighted by pi_c^-s (single; a weighted mean) or each finding's positives by
      ((1 - pi_c) / pi_c)^s (multi: BCE's pos_weight; s = 1 weighs a finding's positives as much as its negatives);
    - "logit_adjust" (Menon et al. 2021): the loss sees logits + s·log pi (single) or + s·log(pi / (1 - pi)) (multi,
      per finding); predictions use the raw logits, which then estimate class-balanced probabilities.
    """
    logits = logits.float()
    if balance not in ("none", "weights", "logit_adjust"):
        raise ValueError(f"unknown balance '{balance}'; expected none, weights or logit_adjust")
    if balance != "none" and prior is None:
        raise ValueError(f"balance '{balance}' needs the labeled prior")
    odds = None if prior is None else (prior if task == "single" else prior / (1 - prior)).float()
    if balance == "logit_adjust":
        logits = logits + strength * odds.log()
    weight = odds.pow(-strength) if balance == "weights" else None
    if task == "single":
        return F.cross_entropy(logits, targets, weight=weight)
    return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=weight)


def consistency_loss(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """L_mt (method.md §3.2): mean over the batch of ||p_S - p_T||^2. p_*: (B, C); the teacher side is detached."""
    return ((p_student - p_teacher.detach()) ** 2).sum(dim=1).mean()


def _positive_weights(labels: torch.Tensor, keys: torch.Tensor, task: str) -> torch.Tensor:
    """(N, M) positive weights of anchors against keys: 1 for the same class (single); Jaccard overlap of the
    label sets (multi), 1 between two "No Finding" (all-zero) images."""
    if task == "single":
        return (labels[:, None] == keys[None, :]).float()
    a, b = labels.float(), keys.float()  # (N, C), (M, C) 0/1
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def supcon_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
    task: str = "single",
    bank_z: torch.Tensor | None = None,
    bank_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_sde (method.md §3.3): supervised contrastive loss over the labeled views.

    Args:
        z: (N, D) L2-normalised projections of the 2·B_L labeled views (the anchors).
        labels: (N,) class indices, or (N, C) 0/1 finding matrix for multi-label (Jaccard-weighted positives).
        bank_z, bank_labels: optional (K, D) / (K,) or (K, C) memory bank of earlier labeled views (method.md §3.3's
            option, `SDEBank`): extra keys, positives and negatives alike, without gradient; anchors stay the batch.

    Anchors without any positive are left out of the mean; no anchor has one -> 0 (still in the graph).
    """
    with torch.autocast(device_type=z.device.type, enabled=False):  # fp32: exp(1/0.1) overflows fp16
        z = z.float()
        n = z.shape[0]
        keys, key_labels = z, labels
        if bank_z is not None and bank_z.shape[0] > 0:
            keys = torch.cat([z, bank_z.detach().float()])
            key_labels = torch.cat([labels, bank_labels.to(labels.dtype)])
        self_mask = torch.eye(n, keys.shape[0], dtype=torch.bool, device=z.device)  # (N, N + K): a != i
        sim = (z @ keys.T / temperature).masked_fill(self_mask, float("-inf"))
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)  # logsumexp subtracts the row max
        weights = _positive_weights(labels, key_labels, task).masked_fill(self_mask, 0.0)
        has_pos = weights.sum(1) > 0
        per_anchor = -(weights * log_prob.masked_fill(self_mask, 0.0)).sum(1) / weights.sum(1).clamp_min(1e-12)
        if not has_pos.any():
            return z.sum() * 0.0
        return per_anchor[has_pos].mean()


class SDEBank(nn.Module):
    """method.md §3.3's optional memory bank: the last `size` labeled views' projections and labels, so that an anchor
    of a rare class (a finding in 1 of 100 labeled images) meets positives that are not in its own batch.

    Hand-written (pytorch-metric-learning's CrossBatchMemory, the same cross-batch memory of Wang et al. 2020, is
    the test oracle) because its label memory holds class indices only and its queue position is not in its state
    dict; here the multi-label rows and the position are buffers, so the bank lives in the checkpoint. The stored
    projections are the student's, detached, from the last size / (2·B_L) steps. Under distributed training every
    process pushes the views of all processes (gathered in rank order), so the banks stay identical.
    """

    def __init__(self, size: int, dim: int, num_classes: int, task: str = "single") -> None:
        super().__init__()
        self.register_buffer("z", torch.zeros(size, dim))
        label_shape = (size,) if task == "single" else (size, num_classes)
        self.register_buffer("labels", torch.zeros(label_shape, dtype=torch.long if task == "single" else torch.float))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # valid rows (grows to size)
        self.register_buffer("position", torch.zeros((), dtype=torch.long))  # next row to overwrite

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid rows: (K, D) projections and (K,) or (K, C) labels, K = filled."""
        k = int(self.filled)
        return self.z[:k], self.labels[:k]

    @torch.no_grad()
    def push(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Store (N, D) projections and their labels, overwriting the oldest rows first."""
        size = self.z.shape[0]
        z, labels = all_gather_rows(z.detach().float()), all_gather_rows(labels.to(self.labels.dtype))
        z, labels = z[-size:], labels[-size:]  # a batch larger than the bank keeps its last rows
        rows = (self.position + torch.arange(z.shape[0], device=z.device)) % size
        self.z[rows] = z
        self.labels[rows] = labels
        self.position.copy_((self.position + z.shape[0]) % size)
        self.filled.copy_(torch.clamp(self.filled + z.shape[0], max=size))


def pseudo_label_loss(
    logits: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor, task: str = "single"
) -> torch.Tensor:
    """L_capr (method.md §3.4): masked CE/BCE of the student's view to pseudo-labels, averaged over all B_U samples.

    Args:
        logits: (B_U, C) student logits on u^s.
        pseudo: (B_U,) class indices (single) or (B_U, C) 0/1 (multi).
        mask: (B_U,) or (B_U, C) 1 where the pseudo-label is kept.
    """
    if task == "single":
        per_sample = F.cross_entropy(logits.float(), pseudo, reduction="none")  # (B_U,)
        return (per_sample * mask.float()).sum() / logits.shape[0]
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), pseudo.float(), reduction="none")  # (B_U, C)
    return (per_pair * mask.float()).sum() / per_pair.numel()


def fairness_loss(logits_kept: torch.Tensor, class_probs: torch.Tensor, class_hist: torch.Tensor) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term L_f = -H(SumNorm(p~/h~), SumNorm(p_bar/h_bar)) (Wang et al. 2023).

    = sum_c a_c log b_c with a = SumNorm(p~ / h~) from the EMA class probabilities and prediction histogram (no
    gradient) and b = SumNorm(p_bar / h_bar) from the student's strong-view probabilities of the kept samples (mean
    p_bar, argmax histogram h_bar, itself without gradient). 1/0 counts as 0, as in FreeMatch's and USB's code.
    Hand-written: no library has it. Single-label only.

    Args:
        logits_kept: (K, C) student logits on u^s of the K >= 1 samples whose pseudo-label was kept.
        class_probs, class_hist: (C,) EMA of the mean probability and of the argmax histogram (weak views).
    """

    def inv(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, 1.0 / x.clamp_min(1e-12), torch.zeros_like(x))

    probs = logits_kept.float().softmax(dim=1)
    hist = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).float()
    a = class_probs.float() * inv(class_hist.float())
    a = a / a.sum()
    b = probs.mean(dim=0) * inv(hist / hist.sum())
    b = b / b.sum()
    return (a.detach() * torch.log(b + 1e-12)).sum()


def ramp_up(epoch: float, length: float) -> float:
    """w(t) = exp(-5 (1 - t/T_r)^2) for t < T_r, then 1 (method.md §3.5); length <= 0 means no ramp."""
    if length <= 0 or epoch >= length:
        return 1.0
    return math.exp(-5.0 * (1.0 - max(epoch, 0.0) / length) ** 2)
