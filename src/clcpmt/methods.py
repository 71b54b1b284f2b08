"""Methods (method.md §3-§4): each is a loss of a batch. One step function holds the whole equation

    L = L_sup + w(t)·λ_mt·L_mt + λ_sde·L_sde + w(t)·λ_pl·L_pl

and a method is the recipe of which terms it uses (the paper's ablation rows are exactly these recipes).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError, MethodConfig
from .losses import (
    SDEBank,
    consistency_loss,
    fairness_loss,
    probabilities,
    pseudo_label_loss,
    ramp_up,
    supcon_loss,
    supervised_loss,
)
from .recipes import METHODS, Recipe
from .thresholds import (
    CAPRThreshold,
    Debias,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    select_pseudo_labels,
)


@dataclass
class SSLBatch:
    """One training batch. x1, x2: (B_L, 3, H, W) two weak views (x2 None: one view); y: (B_L,) or (B_L, C).

    u_weak: (B_U, 3, H, W) teacher's weak view; u_student: the student's view (strong or weak);
    u_index: (B_U,) positions in the unlabeled set; u_hidden: (B_U,) true labels for logging only (-1 unknown).
    """

    x1: torch.Tensor
    x2: torch.Tensor | None  # None where the method trains on one labeled view (SSLMethod.labeled_views)
    y: torch.Tensor
    u_weak: torch.Tensor | None = None
    u_student: torch.Tensor | None = None
    u_index: torch.Tensor | None = None
    u_hidden: torch.Tensor | None = None


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: float  # fractional epochs since the start


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    pseudo: torch.Tensor | None = None  # (B_U,) pseudo-labels, for per-class logging
    mask: torch.Tensor | None = None  # (B_U,) kept
    thresholds: torch.Tensor | None = None  # (C,); multi-label (2, C): negative, positive


def build_rule(
    name: str,
    *,
    num_classes: int,
    num_unlabeled: int,
    tau: float,
    tau_min: float,
    momentum: float,
    warmup_epochs: float,
    status: str,
    task: str,
    tau_negative: float = 0.95,
) -> nn.Module:
    """The threshold rule called `name`. tau_negative: multi-label fixed negative threshold of fixed and capr."""
    if name == "fixed":
        return FixedThreshold(num_classes, tau, task, tau_negative)
    if name == "flexmatch":
        return FlexMatchThreshold(num_classes, num_unlabeled, tau, task)
    if name == "freematch":
        return FreeMatchThreshold(num_classes, momentum, task)
    if name == "capr":
        return CAPRThreshold(
            num_classes, num_unlabeled, tau, tau_min, momentum, warmup_epochs, status, task, tau_negative
        )
    raise ConfigError(f"unknown threshold rule '{name}'; expected fixed, flexmatch, freematch or capr")


class SSLMethod(nn.Module):
    """A method = a recipe + its weights + its threshold rule (whose state is saved with this module)."""

    def __init__(
        self,
        recipe: Recipe,
        num_classes: int,
        *,
        num_unlabeled: int = 0,
        task: str = "single",
        lambda_mt: float = 1.0,
        lambda_sde: float = 0.1,
        lambda_pl: float = 1.0,
        rampup_epochs: float = 30.0,
        sde_temperature: float = 0.1,
        tau: float = 0.95,
        tau_min: float = 0.5,
        momentum: float = 0.999,
        warmup_epochs: float = 5.0,
        status: str = "confidence",
        mt_on_labeled: bool = True,
        tau_negative: float = 0.95,
        lambda_fair: float = 0.01,
        class_balance: str = "none",
        balance_strength: float = 1.0,
        prior: torch.Tensor | None = None,
        sde_bank: int = 0,
        proj_dim: int = 128,
        debias: float = 0.0,
        debias_momentum: float = 0.999,
        debias_target: str = "uniform",
    ) -> None:
        super().__init__()
        self.recipe, self.task = recipe, task
        self.lambda_fair = lambda_fair
        self.lambda_mt, self.lambda_sde, self.lambda_pl = lambda_mt, lambda_sde, lambda_pl
        self.rampup_epochs, self.sde_temperature, self.mt_on_labeled = rampup_epochs, sde_temperature, mt_on_labeled
        self.class_balance, self.balance_strength = class_balance, balance_strength
        labeled_prior = prior
        if class_balance == "none":
            prior = None  # a None buffer stays out of the state dict: checkpoints without balancing load as before
        elif prior is None:
            prior = torch.full((num_classes,), 0.5)  # a placeholder until a checkpoint's labeled prior is loaded
        self.register_buffer("prior", None if prior is None else prior.float())
        # SDE's optional memory bank of earlier labeled views (None: off, or a method without SDE)
        self.bank = SDEBank(sde_bank, proj_dim, num_classes, task) if recipe.contrastive and sde_bank > 0 else None
        # Optional debiasing of the teacher's pseudo-labelling probabilities (an extension, off by default)
        self.debias = None
        if debias > 0:
            if task != "single" or recipe.threshold is None or recipe.pl_source != "teacher":
                raise ConfigError("method.debias needs single-label data and a method that pseudo-labels from the "
                                 "teacher (clcp_mt, mt_capr)")  # fmt: skip
            target = None
            if debias_target == "labeled":  # pi; NaN (loud, never silently uniform) until a checkpoint supplies it
                nan = torch.full((num_classes,), float("nan"))
                target = nan if labeled_prior is None else labeled_prior.clone()
            self.debias = Debias(num_classes, debias, debias_momentum, target)
        self.rule = None
        if recipe.threshold:
            self.rule = build_rule(
                recipe.threshold,
                num_classes=num_classes,
                num_unlabeled=num_unlabeled,
                tau=tau,
                tau_min=tau_min,
                momentum=momentum,
                warmup_epochs=warmup_epochs,
                status=status,
                task=task,
                tau_negative=tau_negative,
            )

    @property
    def labeled_views(self) -> int:
        return self.recipe.labeled_views

    def views(self, b: SSLBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The images of one forward of the student and one of the teacher (empty: no teacher forward), in order:
        student [x1, (x2), (u^s), (u^w: FixMatch family)], teacher [(u^w), (x2: labeled consistency)]."""
        r = self.recipe
        own_weak = r.threshold is not None and r.pl_source == "student"
        student = [b.x1] + ([b.x2] if self.labeled_views == 2 else []) + ([b.u_student] if r.unlabeled else [])
        student += [b.u_weak] if own_weak else []
        teacher = []
        if r.consistency or (r.threshold and r.pl_source == "teacher"):
            teacher = [b.u_weak] + ([b.x2] if r.consistency and self.mt_on_labeled else [])
        return student, teacher

    def step(self, b: SSLBatch, student: nn.Module, teacher: nn.Module, progress: Progress) -> StepOutput:
        """Total loss of one batch and its parts. Never calls backward; the teacher only runs under no_grad."""
        r, task, n_l = self.recipe, self.task, b.x1.shape[0]
        student_views, teacher_views = self.views(b)
        logits, z = student(torch.cat(student_views))
        n_lv = self.labeled_views * n_l  # labeled rows first: x1 (and x2)
        y_views = b.y.repeat(self.labeled_views, *([1] * (b.y.ndim - 1)))  # (n_lv,) or (n_lv, C)
        loss = supervised_loss(logits[:n_lv], y_views, task, self.prior, self.class_balance, self.balance_strength)
        logs = {"loss/sup": loss.detach()}
        out = StepOutput(loss, logs)
        if not r.unlabeled and not r.contrastive:
            return out
        n_u = b.u_weak.shape[0] if r.unlabeled else 0
        logits_us = logits[n_lv : n_lv + n_u]  # (B_U, C) student on u^s
        w = ramp_up(progress.epoch, self.rampup_epochs)
        logs["ramp"] = torch.tensor(w)
        if teacher_views:
            with torch.no_grad():
                p_teacher = probabilities(teacher(torch.cat(teacher_views))[0], task)  # (B_U [+ B_L], C)
        if r.consistency:
            p_student = probabilities(torch.cat([logits_us, logits[:n_l]] if self.mt_on_labeled else [logits_us]), task)
            logs["loss/mt"] = consistency_loss(p_student, p_teacher)
            out.loss = out.loss + w * self.lambda_mt * logs["loss/mt"]
        if r.contrastive:
            bank = self.bank.contents() if self.bank is not None else (None, None)
            logs["loss/sde"] = supcon_loss(z[:n_lv], y_views, self.sde_temperature, task, *bank)
            out.loss = out.loss + self.lambda_sde * logs["loss/sde"]
            if self.bank is not None:
                self.bank.push(z[:n_lv], y_views)  # after the loss: a view is never its own bank key
        if r.threshold:
            p_pl = p_teacher[:n_u] if r.pl_source == "teacher" else probabilities(logits[-n_u:].detach(), task)
            if self.debias is not None:  # the rule's status, thresholds and pseudo-labels all read the debiased p
                self.debias.update(p_pl)
                p_pl = self.debias(p_pl)
            self.rule.update(p_pl, b.u_index)
            out.thresholds = self.rule.thresholds(progress.epoch).to(p_pl.device)
            out.pseudo, out.mask = select_pseudo_labels(p_pl, out.thresholds, task)
            logs["loss/pl"] = pseudo_label_loss(logits_us, out.pseudo, out.mask, task)
            logs["mask_rate"] = out.mask.float().mean()
            out.loss = out.loss + (w if r.pl_source == "teacher" else 1.0) * self.lambda_pl * logs["loss/pl"]
            if r.fairness and task == "single" and out.mask.any():
                logs["loss/fair"] = fairness_loss(logits_us[out.mask], *self.rule.fairness_state())
                out.loss = out.loss + self.lambda_fair * logs["loss/fair"]
        for key in logs:
            logs[key] = logs[key].detach()
        return out


def build_method(
    name: str, num_classes: int, num_unlabeled: int = 0, task: str = "single", **hparams: float | str | torch.Tensor
) -> SSLMethod:
    """The method called `name` (a key of METHODS) with its hyper-parameters (MethodConfig fields)."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown method '{name}'; expected one of {', '.join(METHODS)}{hint}")
    return SSLMethod(METHODS[name], num_classes, num_unlabeled=num_unlabeled, task=task, **hparams)


# MethodConfig keys that configure something other than the loss of a step (the teacher's EMA and BatchNorm in
# module.py, the student's view in the data module); every other key is an SSLMethod argument of the same name
NOT_LOSS_KEYS = ("name", "ema_decay", "teacher_bn", "student_view")


def method_from_config(
    cfg: MethodConfig, num_classes: int, num_unlabeled: int, task: str, **context: object
) -> SSLMethod:
    """The method of a config's `method` section: each key passed under its own name, so a new hyper-parameter is
    a MethodConfig field and an SSLMethod argument, and nothing in between. context: what the data decides
    (rampup_epochs resolved from the schedule, the labeled prior, the projection size)."""
    params = inspect.signature(SSLMethod.__init__).parameters
    hparams = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NOT_LOSS_KEYS}
    unknown = sorted(set(hparams) - set(params))
    if unknown:  # a key renamed on one side only: fail loudly, never drop a setting
        raise TypeError(
            f"MethodConfig keys {unknown} are no SSLMethod arguments; add them or list them in NOT_LOSS_KEYS"
        )
    return build_method(cfg.name, num_classes, num_unlabeled, task, **{**hparams, **context})
