"""Pseudo-label threshold rules (method.md §3.4, §4): pure functions, and one small stateful module per rule.

A rule's state lives in `register_buffer`s (so checkpoints and `.to()` carry it). The method calls, in this order:
`rule.update(probs, index)` with the batch's pseudo-labelling probabilities, then `rule.thresholds(epoch)`, then
`select_pseudo_labels(probs, thresholds)`. Updates use the batch only (O(B_U)) and all-reduce across processes.

Thresholds are (C,) for single-label (keep argmax c when max p >= T(c)) and (2, C) for multi-label: per finding a
negative threshold (negative pseudo-label when p <= it) and a positive one (positive when p >= it).
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


def binary_thresholds(t_negative: torch.Tensor, t_positive: torch.Tensor) -> torch.Tensor:
    """A rule for each finding's two-class problem {negative, positive} as (2, C) thresholds on p.

    In the two-class problem the pseudo-label is p rounded and its confidence max(p, 1 - p); keeping the label when
    its confidence reaches the class's threshold T-(c) or T+(c) (on confidence, in [0, 1]) means: negative when
    p <= min(1 - T-(c), 0.5), positive when p >= max(T+(c), 0.5). So a positive is never given below 0.5, nor a
    negative above it, whatever the thresholds.
    """
    return torch.stack([(1.0 - t_negative).clamp(max=0.5), t_positive.clamp(min=0.5)])


def debias_probs(probs: torch.Tensor, class_probs: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """p~ = softmax(log p - strength · log p_bar): the teacher's probabilities with the running estimate p_bar of its
    predicted class distribution divided out (DebiasPL's causal adjustment; strength 1 is distribution alignment to
    a uniform target). A class the teacher under-predicts gains, so its pseudo-labels can pass a threshold the raw
    probabilities never reach. probs: (B, C); class_probs: (C,), positive."""
    return torch.softmax(probs.clamp_min(1e-12).log() - strength * class_probs.log(), dim=1)


class Debias(nn.Module):
    """Debiased pseudo-labelling probabilities (single-label; not CLCP-MT as published, an option off by default).

    `update(probs)` folds the batch's mean class probabilities (all-reduced across processes) into an EMA with
    `momentum`, bias-corrected like Adam's moments (the EMA of the first t batches over 1 - momentum^t), so p_bar is
    the teacher's actual mean from the first step, not still mostly its starting value after thousands of steps;
    `forward(probs)` returns debias_probs(probs, p_bar, strength), or with `target` (C,), e.g. the labeled prior pi,
    debias_probs(probs, p_bar / target, strength): at strength 1 ReMixMatch's distribution alignment,
    probs · target / p_bar renormalised, which raises a class predicted less often than `target` holds it rather
    than pulling every class towards a uniform share."""

    def __init__(
        self, num_classes: int, strength: float = 1.0, momentum: float = 0.999, target: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.strength, self.momentum = strength, momentum
        self.register_buffer("running", torch.zeros(num_classes))  # EMA from zero, not yet bias-corrected
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # None (uniform) stays out of the state dict, so checkpoints of uniform debiasing load as before
        self.register_buffer("target", None if target is None else target.float())

    @property
    def class_probs(self) -> torch.Tensor:
        """p_bar (C,): uniform before the first update; floored so that log p_bar stays finite."""
        if self.steps == 0:
            return torch.full_like(self.running, 1.0 / len(self.running))
        return (self.running / (1.0 - self.momentum ** self.steps.item())).clamp_min(1e-6)

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        stats = _all_reduce_sum(torch.cat([probs.sum(0), probs.new_tensor([len(probs)])]).float())
        batch_mean = stats[:-1] / stats[-1].clamp_min(1.0)
        self.running.mul_(self.momentum).add_((1.0 - self.momentum) * batch_mean.to(self.running))
        self.steps += 1

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        p_bar = self.class_probs if self.target is None else self.class_probs / self.target
        return debias_probs(probs, p_bar.to(probs), self.strength)


def select_pseudo_labels(
    probs: torch.Tensor, thresholds: torch.Tensor, task: str = "single"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels and the keep-mask.

    Single-label: thresholds (C,); pseudo = argmax p (B,), kept when max p >= T(pseudo). Multi-label: thresholds
    (2, C) (negative, positive); per finding positive when p >= T+(c), else negative when p <= T-(c) (never when
    T-(c) is 0: a sigmoid can round to exactly 0); pseudo and mask are (B, C).
    """
    if task == "single":
        conf, pseudo = probs.max(dim=1)
        return pseudo, conf >= thresholds[pseudo]
    negative_t, positive_t = thresholds[0][None, :], thresholds[1][None, :]
    positive = probs >= positive_t
    negative = (probs <= negative_t) & (negative_t > 0) & ~positive
    return positive.float(), positive | negative


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


def with_negative(positive: torch.Tensor, task: str, tau_negative: float) -> torch.Tensor:
    """Single-label: positive (C,) as is. Multi-label: (2, C) with the fixed negative threshold 1 - tau_negative
    (method.md §3.4's T-; tau_negative = 1: no negatives)."""
    if task == "single":
        return positive
    # never above the positive threshold: a pair is never both (positive wins ties in select_pseudo_labels)
    return torch.stack([torch.full_like(positive, 1.0 - tau_negative).minimum(positive), positive])


class FixedThreshold(nn.Module):
    """FixMatch: the same threshold tau for every class, no state. Multi-label: positive when p >= tau, negative when
    p <= 1 - tau_negative."""

    def __init__(self, num_classes: int, tau: float = 0.95, task: str = "single", tau_negative: float = 0.95) -> None:
        super().__init__()
        self.num_classes, self.tau, self.task, self.tau_negative = num_classes, tau, task, tau_negative

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        """Nothing to track."""

    def thresholds(self, epoch: float) -> torch.Tensor:
        return with_negative(torch.full((self.num_classes,), self.tau), self.task, self.tau_negative)


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
    the samples whose latest state for c is positive, `negatives` those whose latest state is negative. The table and
    the counts are kept incrementally (O(B_U) a step). Samples never confident enter the max of the normalisation
    (FlexMatch's threshold warm-up).
    """

    def __init__(self, num_classes: int, num_unlabeled: int, tau: float = 0.95, task: str = "single") -> None:
        super().__init__()
        self.num_classes, self.tau, self.task = num_classes, tau, task
        shape = (num_unlabeled,) if task == "single" else (num_unlabeled, num_classes)
        self.register_buffer("table", torch.full(shape, -1, dtype=torch.long))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("unused", torch.tensor(num_unlabeled, dtype=torch.long))
        if task == "multi":
            self.register_buffer("negatives", torch.zeros(num_classes, dtype=torch.long))

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
        if self.task == "multi":
            self.negatives += (new == 0).sum(0) - (old == 0).sum(0)
        self.unused -= (was_unused & ~is_unused).sum()
        self.table[uniq] = new

    def beta(self) -> torch.Tensor:
        counts = self.counts.float()
        return counts / torch.maximum(counts.max(), self.unused.float()).clamp_min(1.0)

    def binary_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-label, each finding a two-class problem: (beta-, beta+) (C,) each, FlexMatch's normalisation within
        the finding, its never-confident samples included: sigma(k) / max(sigma-, sigma+, unused)."""
        pos, neg = self.counts.float(), self.negatives.float()
        unused = len(self.table) - pos - neg  # (C,) samples never confident about this finding
        norm = torch.maximum(torch.maximum(pos, neg), unused).clamp_min(1.0)
        return neg / norm, pos / norm


class CAPRThreshold(nn.Module):
    """CAPR (method.md §3.4): thresholds held at tau for `warmup_epochs`, then clip(tau·M(beta), tau_min, tau).

    Multi-label: these are the positive thresholds; the negative one is fixed at 1 - tau_negative.
    """

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
        tau_negative: float = 0.95,
    ) -> None:
        super().__init__()
        self.tau, self.tau_min, self.warmup_epochs = tau, tau_min, warmup_epochs
        self.task, self.tau_negative = task, tau_negative
        if status == "confidence":
            self.status: nn.Module = ConfidenceStatus(num_classes, momentum, task)
        else:
            self.status = CountStatus(num_classes, num_unlabeled, tau, task)

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        self.status.update(probs, index)  # statistics are collected during the warm-up as well

    def thresholds(self, epoch: float) -> torch.Tensor:
        beta = self.status.beta()
        positive = (
            torch.full_like(beta, self.tau)
            if epoch < self.warmup_epochs
            else capr_thresholds(beta, self.tau, self.tau_min)
        )
        return with_negative(positive, self.task, self.tau_negative)


class FlexMatchThreshold(nn.Module):
    """FlexMatch: tau · M(beta) with the count status; starts at 0 (every pseudo-label accepted at step 0).

    Multi-label: FlexMatch on each finding's two-class problem (`CountStatus.binary_beta`, `binary_thresholds`): the
    pseudo-label is p rounded, kept when max(p, 1 - p) >= tau · M(beta) of its class. While most of the set has
    never been confident about the finding, both thresholds sit at their floor: positive p >= 0.5, negative p < 0.5.
    """

    def __init__(self, num_classes: int, num_unlabeled: int, tau: float = 0.95, task: str = "single") -> None:
        super().__init__()
        self.tau, self.task = tau, task
        self.status = CountStatus(num_classes, num_unlabeled, tau, task)

    def update(self, probs: torch.Tensor, index: torch.Tensor) -> None:
        self.status.update(probs, index)

    def thresholds(self, epoch: float) -> torch.Tensor:
        if self.task == "single":
            return flexmatch_thresholds(self.status.beta(), self.tau)
        beta_negative, beta_positive = self.status.binary_beta()
        return binary_thresholds(
            flexmatch_thresholds(beta_negative, self.tau), flexmatch_thresholds(beta_positive, self.tau)
        )


class FreeMatchThreshold(nn.Module):
    """FreeMatch's self-adaptive thresholds: EMA of the global max confidence times the max-normalised EMA of p.

    Single-label: global confidence and class probabilities start at 1/C. Multi-label: FreeMatch on each finding's
    two-class problem: the global confidence is the EMA of max(p, 1 - p) over all (sample, finding) pairs and starts
    at 1/2, the two-class probabilities of finding c are (1 - p~(c), p~(c)) with p~(c) the EMA of p_c (from 1/2), and
    `binary_thresholds` turns T-(c), T+(c) into thresholds on p.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, task: str = "single") -> None:
        super().__init__()
        self.momentum, self.task = momentum, task
        start = 1.0 / num_classes if task == "single" else 0.5
        self.register_buffer("global_conf", torch.tensor(start))
        self.register_buffer("class_probs", torch.full((num_classes,), start))
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

    def fairness_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(p~, h~), each (C,): the EMA of p and of the argmax histogram that FreeMatch's fairness term
        (losses.fairness_loss) normalises by. Single-label only."""
        return self.class_probs, self.class_hist

    def thresholds(self, epoch: float) -> torch.Tensor:
        if self.task == "single":
            return freematch_thresholds(self.global_conf, self.class_probs)
        two_class = torch.stack([1.0 - self.class_probs, self.class_probs])  # (2, C): negative, positive
        t = two_class / two_class.max(dim=0).values * self.global_conf  # MaxNorm within each finding
        return binary_thresholds(t[0], t[1])
