"""SSLModule: the Lightning system around a method: EMA teacher, optimiser, validation, logging. No equations here."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
from torchmetrics import CatMetric

from .config import TrainingError
from .losses import probabilities
from .methods import Progress, SSLBatch, SSLMethod
from .metrics import classification_metrics
from .model import Student, ema_update


def set_teacher_mode(teacher: torch.nn.Module, bn: str) -> None:
    """The teacher's mode for a training step; its forward never writes a buffer (they are the EMA's alone).

    bn="ema": eval mode, BatchNorm normalises with the running statistics, i.e. the EMA of the student's.
    bn="batch": BatchNorm normalises with the batch's own statistics (as Mean Teacher's reference code runs its EMA
    model) without tracking them; dropout and the rest stay in eval mode. Validation and inference always use
    eval mode (the EMA statistics).
    """
    teacher.eval()
    for m in teacher.modules():
        if bn == "batch" and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False  # train mode then reads batch statistics and writes no buffer


class SSLModule(L.LightningModule):
    """Trains `student` with `method`; the teacher is the student's EMA and is what `forward` runs.

    mean, std: the per-channel normalisation of its input images (the weights' own); whoever feeds it images
    (evaluation, predict, export) normalises with `normalization`.
    """

    def __init__(
        self,
        student: Student,
        method: SSLMethod,
        classes: tuple[str, ...],
        *,
        config: dict | None = None,
        ema_decay: float = 0.99,
        lr: float = 1e-4,
        weight_decay: float = 5e-4,
        schedule: str = "exponential",
        lr_decay: float = 0.9,
        epochs: int = 30,
        steps_per_epoch: int = 1,
        channels_last: bool = False,
        task: str = "single",
        optimizer: str = "adam",
        teacher_bn: str = "ema",
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "method"])
        self.student, self.method, self.classes, self.task = student, method, tuple(classes), task
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        if teacher_bn not in ("ema", "batch"):
            raise ValueError(f"teacher_bn must be ema or batch; got '{teacher_bn}'")
        self.teacher_bn = teacher_bn
        self.normalization = (tuple(mean), tuple(std))  # of every input image: the weights' own statistics
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.student.to(memory_format=torch.channels_last)
            self.teacher.to(memory_format=torch.channels_last)
        self.val_probs = torch.nn.ModuleDict({"teacher": CatMetric(), "student": CatMetric()})  # DDP-aware gathers
        self.val_targets = CatMetric()
        self._reset_pl_stats()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Here, not in train(): Lightning never calls module.train() during fit and restores every submodule's
        # flag after validation, so a mode set once would not hold (the teacher would run BatchNorm in train mode).
        set_teacher_mode(self.teacher, self.teacher_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher probabilities (N, C) for images x (N, 3, H, W)."""
        return probabilities(self.teacher(x.to(memory_format=self.memory_format))[0], self.task)

    def _batch(self, batch: dict) -> SSLBatch:
        *views, y = batch["labeled"]  # one or two weak views (SSLMethod.labeled_views), then the labels
        fmt = self.memory_format
        x2 = views[1].to(memory_format=fmt) if len(views) == 2 else None
        b = SSLBatch(views[0].to(memory_format=fmt), x2, y)
        if "unlabeled" in batch:
            uw, us, hidden, index = batch["unlabeled"]
            b.u_weak, b.u_student = uw.to(memory_format=fmt), us.to(memory_format=fmt)
            b.u_index, b.u_hidden = index, hidden
        return b

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        b = self._batch(batch)
        progress = Progress(self.global_step, self.current_epoch + batch_idx / self.hparams.steps_per_epoch)
        out = self.method.step(b, self.student, self.teacher, progress)
        if not torch.isfinite(out.loss):
            self._stop_on_non_finite(out)
        self.log_dict(
            {f"train/{k}": v for k, v in out.logs.items()}, on_step=False, on_epoch=True, batch_size=b.x1.shape[0]
        )
        if out.thresholds is not None:
            self.last_thresholds = out.thresholds.detach().cpu()
            self._accumulate_pl_stats(out, b.u_hidden)
        return out.loss

    def _stop_on_non_finite(self, out: object) -> None:
        terms = [k for k, v in out.logs.items() if k.startswith("loss/") and not torch.isfinite(v).all()]
        saved = [Path(c.dirpath) / "last.ckpt" for c in self.trainer.checkpoint_callbacks if c.dirpath]
        last = next((str(p) for p in saved if p.is_file()), "")
        raise TrainingError(
            f"step {self.global_step} (epoch {self.current_epoch}): the loss is {out.loss.item()} (not finite in "
            f"{', '.join(terms) or 'the total'}); its optimiser step was not taken. Last good checkpoint: "
            f"{last or 'none yet'}. Lower train.lr, or look for broken images or labels"
        )

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        ema_update(self.teacher, self.student, self.hparams.ema_decay, self.global_step - 1)

    def _reset_pl_stats(self) -> None:
        # per class: candidates (samples predicted c; multi-label: all samples), accepted, accepted and correct;
        # multi-label also: negatives accepted, hidden positives, hidden positives given a negative pseudo-label
        self.pl_stats = torch.zeros(6, len(self.classes))
        self.last_thresholds: torch.Tensor | None = None

    def _accumulate_pl_stats(self, out: object, hidden: torch.Tensor) -> None:
        """Hidden labels (-1: unknown) are only counted here, never used for training."""
        pseudo, mask, hidden = out.pseudo.cpu(), out.mask.cpu(), hidden.cpu()
        if self.task == "single":
            c = len(self.classes)
            correct = mask & (pseudo == hidden)
            self.pl_stats[:3] += torch.stack(
                [torch.bincount(p, minlength=c) for p in (pseudo, pseudo[mask], pseudo[correct])]
            )
        else:  # per finding: positive and negative pseudo-labels
            positive, negative, truth = mask & (pseudo > 0.5), mask & (pseudo < 0.5), hidden > 0.5
            self.pl_stats[0] += len(pseudo)
            self.pl_stats[1:] += torch.stack([positive, positive & truth, negative, truth, negative & truth]).sum(1)

    def on_train_epoch_end(self) -> None:
        """Per class: (positive) threshold, acceptance rate (single-label: among samples predicted c; multi-label:
        positive pseudo-labels per unlabeled sample) and precision of the accepted (positive) pseudo-labels.
        Multi-label also: the negative threshold, negative pseudo-labels per unlabeled sample, and the share of the
        finding's (hidden) positives that were given a negative one (`neg_missed`: a rare finding the teacher has
        not learned is pushed to 0 here)."""
        if self.last_thresholds is not None:
            candidates, accepted, correct, negatives, positives, missed = self.pl_stats

            def ratio(a: torch.Tensor, b: torch.Tensor, empty: float = float("nan")) -> float:
                return (a / b).item() if b else empty

            t = self.last_thresholds  # (C,); multi-label (2, C): negative, positive
            positive = t if self.task == "single" else t[1]
            for i, name in enumerate(self.classes):
                self.log(f"threshold/{name}", positive[i].item())
                self.log(f"accept_rate/{name}", ratio(accepted[i], candidates[i], 0.0))
                self.log(f"pl_precision/{name}", ratio(correct[i], accepted[i]))
                if self.task == "multi":
                    self.log(f"neg_threshold/{name}", t[0, i].item())
                    self.log(f"neg_rate/{name}", ratio(negatives[i], candidates[i], 0.0))
                    self.log(f"neg_missed/{name}", ratio(missed[i], positives[i]))
        self._reset_pl_stats()

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        x, y = batch
        x = x.to(memory_format=self.memory_format)
        self.val_probs["teacher"].update(probabilities(self.teacher(x)[0], self.task))
        self.val_probs["student"].update(probabilities(self.student(x)[0], self.task))
        self.val_targets.update(y)

    def on_validation_epoch_end(self) -> None:
        c = len(self.classes)
        targets = self.val_targets.compute()
        targets = targets.long() if self.task == "single" else targets.reshape(-1, c)
        for who, metric in self.val_probs.items():
            probs = metric.compute().reshape(-1, c)
            m = classification_metrics(probs, targets, self.task)
            prefix = "val" if who == "teacher" else "val_student"
            self.log_dict({f"{prefix}/{k}": m[k] for k in ("auc", "bacc", "f1") if k in m}, sync_dist=False)
            metric.reset()
        self.val_targets.reset()

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # adam: L2 in the gradient, as the paper lineage; adamw: decoupled weight decay
        opt_class = torch.optim.AdamW if hp.get("optimizer", "adam") == "adamw" else torch.optim.Adam
        opt = opt_class(self.student.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs * hp.steps_per_epoch)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
