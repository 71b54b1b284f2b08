"""What a run prints: one line per epoch with the numbers that matter, one progress bar for the whole run (its
time estimate is the run's, not the epoch's), and Lightning's lines once each, without advertisements."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

log = logging.getLogger("clcpmt")


def quiet_lightning_logs() -> None:
    """One copy of each Lightning line and none of its advertisements. Lightning gives its loggers handlers of their
    own; where the CLI has set up the root handler, those would print every line a second time, so they go."""
    root = logging.getLogger()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        lightning_log = logging.getLogger(name)
        if root.handlers:
            lightning_log.handlers.clear()
            lightning_log.propagate = True
        for handler in lightning_log.handlers:
            if _no_tips not in handler.filters:
                handler.addFilter(_no_tips)
    for handler in root.handlers:
        if _no_tips not in handler.filters:
            handler.addFilter(_no_tips)


def _no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


class EpochLine(Callback):
    """One line per epoch: loss terms, validation AUC / balanced accuracy / F1 (teacher), the mean threshold of
    pseudo-labelling methods, time so far and the estimate left for the whole run. Printed when the epoch's numbers
    are all in: at the start of the next epoch, and at the end of training for the last one."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.first_epoch, self.printed = time.perf_counter(), trainer.current_epoch, trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > self.printed:
            self._line(trainer, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line(trainer, trainer.current_epoch)

    def _line(self, trainer: L.Trainer, done_epochs: int) -> None:
        self.printed = done_epochs
        if not trainer.is_global_zero or not log.isEnabledFor(logging.INFO):
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        losses = "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in sorted(m.items()) if k.startswith("train/loss/"))
        val = "  ".join(f"{name} {100 * m[k]:.2f}" for k, name in (("val/auc", "AUC"), ("val/bacc", "BAcc"),
                                                                    ("val/f1", "F1")) if k in m)  # fmt: skip
        thresholds = [v for k, v in m.items() if k.startswith("threshold/")]
        mean_t = f" | mean threshold {sum(thresholds) / len(thresholds):.2f}" if thresholds else ""
        spent = time.perf_counter() - self.start
        left = spent / max(done_epochs - self.first_epoch, 1) * (trainer.max_epochs - done_epochs)
        # tqdm.write: above the progress bar, which redraws below the line
        tqdm.write(f"epoch {done_epochs}/{trainer.max_epochs}  {losses} | val {val}{mean_t} | {_minutes(spent)}, "
                   f"~{_minutes(left)} left", file=sys.stderr)  # fmt: skip


class RunProgressBar(TQDMProgressBar):
    """Lightning's bar, but one bar over every step of the run: its rate and time left are the whole run's."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        if trainer.current_epoch == self._first_epoch(trainer):
            self.train_progress_bar.reset(total=trainer.max_epochs * self.total_train_batches)
            self.train_progress_bar.initial = trainer.global_step
            self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def _first_epoch(self, trainer: L.Trainer) -> int:
        if not hasattr(self, "_start_epoch"):
            self._start_epoch = trainer.current_epoch  # 0, or the epoch a resumed run starts from
        return self._start_epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the epoch line says it, and the bar goes on."""

    def init_validation_tqdm(self) -> Any:
        return Tqdm(disable=True)  # a few seconds each epoch; the epoch line follows
