"""Pseudo-label threshold rules (SPEC §3.4, §4): pure functions, and one small stateful module per rule.

A rule's state lives in `register_buffer`s (so checkpoints and `.to()` carry it). The method calls, in this order:
`rule.update(probs, index)` with the batch's pseudo-labelling probabilities, then `rule.thresholds(epoch)`, then
`select_pseudo_labels(probs, thresholds)`. Updates use the batch only (O(B_U)) and all-reduce across processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def warp(x: torch.Tensor) -> torch.Tensor:
    """FlexMatch's convex mapping M(x) = x / (2 - x)."""
    return x / (2.0 - x)


def capr_thresholds(beta: torch.Tensor, tau: float = 0.95, tau_min: float = 0.5) -> torch.Tensor:
    """T(c) = clip(tau · M(beta(c)), tau_min, tau). beta: (C,) learning status in [0, 1]."""
    return (tau * warp(beta)).clamp(min=tau_min, max=tau)


def flexmatch_thresholds(beta: torch.Tensor, tau: float = 0.95) -> torch.Tensor:
    """FlexMatch: T(c) = tau · M(beta(c)), no floor."""
    return tau * warp(beta)


def freematch_thresholds(global_conf: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
    """FreeMatch: T(c) = MaxNorm(p~)(c) · tau_t. global_conf: () EMA of max confidence; class_probs: (C,)."""
    return class_probs / class_probs.max() * global_conf


def select_pseudo_labels(
    probs: torch.Tensor, thresholds: torch.Tensor, task: str = "single", negative_threshold: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and the keep-mask.

    Single-label: pseudo = argmax p (B,), kept when max p >= T(pseudo). Multi-label: per finding, positive when
    p >= T(c), negative when p <= negative_threshold (never when it is 0); mask (B, C) marks both.
    """
    if task == "single":
        conf, pseudo = probs.max(dim=1)
        return pseudo, conf >= thresholds[pseudo]
    positive = probs >= thresholds[None, :]
    if negative_threshold <= 0:  # tau_negative = 1: positives only (a sigmoid can still round to exactly 0)
        return positive.float(), positive
    return positive.float(), positive | (probs <= negative_threshold)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's (N, ...) rows in rank order (the tensor itself outside distributed runs)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


class FixedThreshold(nn.Module):
    """FixMatch: the same threshold tau for every class, no state."""

    def __init__(self, num_classes: int, tau: float = 0.95) -> None:
        super().__init__()
        self.num_classes, self.tau = num_classes, tau

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        """Nothing to track."""

    def thresholds(self, epoch: float) -> torch.Tensor:
        return torch.full((self.num_classes,), self.tau)


class ConfidenceStatus(nn.Module):
    """sigma(c) = m·sigma(c) + (1-m)·(batch mean confidence of samples predicted c); absent classes keep their value.

    Multi-label: the batch mean of p_c over samples with p_c >= 0.5.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, task: str = "single") -> None:
        super().__init__()
        self.momentum, self.task = momentum, task
        self.register_buffer("sigma", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        if self.task == "single":
            conf, pred = probs.max(dim=1)
            stats = torch.zeros(2, probs.shape[1], device=probs.device)
            stats[0].index_add_(0, pred, conf.float())
            stats[1].index_add_(0, pred, torch.ones_like(conf, dtype=torch.float))
        else:
            confident = (probs >= 0.5).float()
            stats = torch.stack([(probs * confident).sum(0), confident.sum(0)]).float()
        stats = _all_reduce_sum(stats)  # (2, C): sums of confidence, counts
        seen = stats[1] > 0
        mean = stats[0][seen] / stats[1][seen]
        self.sigma[seen] = self.momentum * self.sigma[seen] + (1 - self.momentum) * mean.to(self.sigma.dtype)

    def beta(self) -> torch.Tensor:
        return self.sigma / self.sigma.max()


class CountStatus(nn.Module):
    """FlexMatch's curriculum: sigma(c) = #unlabeled samples whose latest confident (q >= tau) prediction is c.

    Multi-label: per finding, the latest confident state (positive p >= tau, negative p <= 1 - tau); sigma(c) counts
    the samples whose latest state for c is positive. The table and the counts are kept incrementally (O(B_U) a
    step). Samples never confident enter the max of the normalisation (FlexMatch's threshold warm-up).
    """

    def __init__(self, num_classes: int, num_unlabeled: int, tau: float = 0.95, task: str = "single") -> None:
        super().__init__()
        self.num_classes, self.tau, self.task = num_classes, tau, task
        shape = (num_unlabeled,) if task == "single" else (num_unlabeled, num_classes)
        self.register_buffer("table", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("unused", torch.tensor(num_unlabeled, dtype=torch.long))

    def _positives(self, rows: torch.Tensor) -> torch.Tensor:
        """(C,) positive counts of table rows: (K,) class ids or (K, C) states."""
        if self.task == "single":
            return torch.bincount(rows[rows >= 0], minlength=self.num_classes)
        return (rows == 1).sum(0)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        if self.task == "single":
            conf, pred = probs.max(dim=1)
            state = torch.where(conf >= self.tau, pred, torch.full_like(pred, -1))  # (B,)
        else:
            state = torch.full(probs.shape, -1, dtype=torch.long, device=probs.device)  # (B, C)
            state[probs <= 1 - self.tau] = 0
            state[probs >= self.tau] = 1
        index, state = all_gather_rows(index.to(self.table.device)), all_gather_rows(state.to(self.table.device))
        uniq, inverse = torch.unique(index, return_inverse=True)  # a sample seen twice in a step counts once
        new = torch.full((len(uniq), *state.shape[1:]), -1, dtype=torch.long, device=state.device)
        new.index_copy_(0, inverse, state)
        old = self.table[uniq]
        new = torch.where(new >= 0, new, old)  # unconfident: keep the latest confident state
        was_unused, is_unused = old.reshape(len(uniq), -1).lt(0).all(1), new.reshape(len(uniq), -1).lt(0).all(1)
        self.counts += self._positives(new) - self._positives(old)
        self.unused -= (was_unused & ~is_unused).sum()
        self.table[uniq] = new

    def beta(self) -> torch.Tensor:
        counts = self.counts.float()
        return counts / torch.maximum(counts.max(), self.unused.float()).clamp_min(1.0)


class CAPRThreshold(nn.Module):
    """CAPR (SPEC §3.4): thresholds held at tau for `warmup_epochs`, then clip(tau·M(beta), tau_min, tau)."""

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int,
        tau: float = 0.95,
        tau_min: float = 0.5,
        momentum: float = 0.999,
        warmup_epochs: float = 5.0,
        status: str = "confidence",
        task: str = "single",
    ) -> None:
        super().__init__()
        self.tau, self.tau_min, self.warmup_epochs = tau, tau_min, warmup_epochs
        if status == "confidence":
            self.status: nn.Module = ConfidenceStatus(num_classes, momentum, task)
        else:
            self.status = CountStatus(num_classes, num_unlabeled, tau, task)

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        self.status.update(probs, index)  # statistics are collected during the warm-up as well

    def thresholds(self, epoch: float) -> torch.Tensor:
        beta = self.status.beta()
        if epoch < self.warmup_epochs:
            return torch.full_like(beta, self.tau)
        return capr_thresholds(beta, self.tau, self.tau_min)


class FlexMatchThreshold(nn.Module):
    """FlexMatch: tau · M(beta) with the count status; starts at 0 (every pseudo-label accepted at step 0)."""

    def __init__(self, num_classes: int, num_unlabeled: int, tau: float = 0.95, task: str = "single") -> None:
        super().__init__()
        self.tau = tau
        self.status = CountStatus(num_classes, num_unlabeled, tau, task)

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        self.status.update(probs, index)

    def thresholds(self, epoch: float) -> torch.Tensor:
        return flexmatch_thresholds(self.status.beta(), self.tau)


class FreeMatchThreshold(nn.Module):
    """FreeMatch's self-adaptive thresholds: EMA of the global max confidence times the max-normalised EMA of p.

    Multi-label: the confidence of a (sample, finding) pair is max(p, 1 - p), averaged over pairs.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, task: str = "single") -> None:
        super().__init__()
        self.momentum, self.task = momentum, task
        self.register_buffer("global_conf", torch.tensor(1.0 / num_classes))
        self.register_buffer("class_probs", torch.full((num_classes,), 1.0 / num_classes))
        # EMA of the argmax histogram, for the fairness term (losses.fairness_loss; single-label only)
        self.register_buffer("class_hist", torch.full((num_classes,), 1.0 / num_classes))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        conf = probs.max(dim=1).values if self.task == "single" else torch.maximum(probs, 1 - probs).mean(dim=1)
        hist = torch.bincount(probs.argmax(dim=1), minlength=probs.shape[1]).to(probs)
        stats = torch.cat([conf.sum()[None], probs.sum(0), hist, probs.new_tensor([len(probs)])])
        stats = _all_reduce_sum(stats.float())  # (2C + 2,): sum of max p, sum of p per class, histogram, count
        m, c = self.momentum, len(self.class_probs)
        self.global_conf.mul_(m).add_((1 - m) * stats[0] / stats[-1])
        self.class_probs.mul_(m).add_((1 - m) * stats[1 : c + 1] / stats[-1])
        self.class_hist.mul_(m).add_((1 - m) * stats[c + 1 : 2 * c + 1] / stats[-1])

    def thresholds(self, epoch: float) -> torch.Tensor:
        return freematch_thresholds(self.global_conf, self.class_probs)
