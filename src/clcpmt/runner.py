"""Train: one run from a config into its run folder (held by a lock), resumable after a kill."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .config import (
    Config,
    ConfigError,
    load_config,
    save_config,
    to_dict,
    with_defaults,
)
from .console import EpochLine, RunProgressBar, quiet_lightning_logs
from .data.datamodule import SSLDataModule
from .data.sources import prepare_data
from .export import model_card
from .inference import evaluate_parts, testing_outputs, writable_folder
from .losses import class_prior
from .methods import METHODS
from .model import check_model
from .plots import plot_training
from .report import write_report  # at import, not at the run's end: a file edited during a long run is not mixed in
from .system import build_system, read_checkpoint, run_data, student_sees_strong, with_normalization

log = logging.getLogger("clcpmt")


def check_run_folder(run_dir: Path, resume: bool, fresh_folder_ok: bool = False) -> None:
    """A new run never writes into a folder that holds a run (its checkpoints, config or metrics would be mixed
    with the new ones); a resumed one needs a folder with a run in it."""
    held = [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")] if run_dir.is_dir() else []
    held += [n for n in ("config.yaml", "metrics.json") if (run_dir / n).is_file()]
    if not resume and held and not fresh_folder_ok:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(sorted(held))}); pass --resume {run_dir} "
                              "to continue it, or choose another run_dir")  # fmt: skip
    if resume and not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no run there (no config.yaml)")


LOCK = ".lock"


class RunInUseError(FileExistsError):
    """Another process holds the run folder (its PID is in the message)."""


def _holder(lock: object) -> str:
    lock.seek(0)
    return lock.read().strip() or "?"


@contextlib.contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[bool]:
    """An exclusive lock on run_dir (flock on run_dir/.lock) for the life of a run: one run folder, one process.

    The kernel drops the lock when the process ends, also by kill -9, so a killed run resumes with no clean-up.
    Yields whether this call made the folder; a start that fails before writing anything else removes it again."""
    created = not run_dir.exists()
    writable_folder(run_dir, "run_dir")
    lock = open(run_dir / LOCK, "a+")  # held open for the whole run, closed below
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(lock)
        lock.close()
        raise RunInUseError(f"{run_dir} is in use by another clcpmt process (PID {pid}): one run folder takes one "
                            "process; wait for it to end, stop it, or choose another run_dir") from None  # fmt: skip
    try:
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield created
    finally:
        if created and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK}:
            shutil.rmtree(run_dir, ignore_errors=True)
        lock.close()


def run_in_use(run_dir: Path) -> str | None:
    """The PID of the process training in run_dir, or None (a reader's check: it takes no lock it keeps)."""
    if not (run_dir / LOCK).is_file():
        return None
    with open(run_dir / LOCK) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(lock)
    return None


def _trainer(cfg: Config, announce: bool = True, **kwargs) -> L.Trainer:
    """Lightning's Trainer on cfg.train's accelerator and devices, its device banner ("GPU available: ...", "TPU
    available: ...") replaced by one line of ours, and a device request the machine cannot meet a ConfigError."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banner.level
    banner.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(accelerator=cfg.train.accelerator, devices=cfg.train.devices, **kwargs)
    except (MisconfigurationException, TypeError, ValueError) as e:  # Lightning's CPU parser raises TypeError
        asked = f"train.accelerator={cfg.train.accelerator}, train.devices={cfg.train.devices}"
        raise ConfigError(f"{asked}: {e}") from None
    finally:
        banner.setLevel(level)
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    if announce:
        log.info(f"training on {kind}: {trainer.num_devices} device(s) x {trainer.num_nodes} node(s), "
                 f"precision {trainer.precision}, {torch.get_num_threads()} CPU threads")  # fmt: skip
    return trainer


def train(
    cfg: Config, resume: bool = False, callbacks: tuple[Callback, ...] = (), fresh_folder_ok: bool = False
) -> Path | None:
    """Fit cfg's method, then evaluate the best checkpoint on validation and testing, holding the run folder's lock
    throughout. Returns the run folder (None in the other processes of a distributed run, where the launching
    process holds the lock). fresh_folder_ok: the caller made run_dir for this run."""
    quiet_lightning_logs()
    if rank_zero_only.rank != 0:  # DDP's other processes start later, when process 0 has written the folder
        return _train(cfg, resume, callbacks, fresh_folder_ok, created=False)
    with hold_run_folder(Path(cfg.run_dir)) as created:
        return _train(cfg, resume, callbacks, fresh_folder_ok, created)


def _train(
    cfg: Config, resume: bool, callbacks: tuple[Callback, ...], fresh_folder_ok: bool, created: bool
) -> Path | None:
    run_dir = Path(cfg.run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if rank_zero_only.rank == 0:
        check_run_folder(run_dir, resume, fresh_folder_ok)
        clean_partial_checkpoints(run_dir / "checkpoints")
    if resume:
        cfg = resumed_config(cfg, last)
    # a run resumed from its last checkpoint takes every weight from it: its starting weights file may be gone
    from_last = resume and last.is_file()
    check_model(cfg.model.backbone, "none" if from_last else cfg.model.pretrained)  # before an image cache is filled
    cfg = with_normalization(cfg)
    writable_folder(run_dir, "run_dir")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    try:
        data = prepare_data(cfg.data)
        recipe = METHODS[cfg.method.name]
        strong = student_sees_strong(cfg.method.name, cfg.method.student_view)
        dm = SSLDataModule(
            data,
            cfg.data.batch_labeled,
            cfg.data.batch_unlabeled,
            cfg.train.steps_per_epoch,
            cfg.data.num_workers,
            recipe.unlabeled,
            strong,
            cfg.train.seed,
            cfg.data.labeled_balance,
            recipe.labeled_views,
            mean=cfg.model.mean,
            std=cfg.model.std,
        )
        prior = class_prior(torch.as_tensor(data.targets[data.parts["labeled"]]), len(data.classes), data.task)
        module = build_system(
            cfg, data.classes, len(data.parts["unlabeled"]), dm.steps_per_epoch, data.task, prior, from_last
        )
        if from_last:
            module.weights_source = f"resumed from {last}; the run started from model.pretrained={cfg.model.pretrained}"
        # the devices asked for, checked before the folder is written (a probe: no logger, no checkpoints)
        _trainer(cfg, announce=False, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    except BaseException:
        if created:  # a failed start (bad data, a weights file that is not one) leaves no run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    data.write_splits(run_dir / "splits")  # the run folder is written only once everything has been built
    save_config(cfg, run_dir / "config.yaml")
    log.info(
        "run %s: method %s, backbone %s (%s); %d labeled, %d unlabeled, %d validation, %d testing images",
        run_dir,
        cfg.method.name,
        cfg.model.backbone,
        module.weights_source,
        *(len(data.parts[p]) for p in ("labeled", "unlabeled", "validation", "testing")),
    )
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=cfg.train.monitor,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,  # always best.ckpt: never a best-v1.ckpt beside a stale best.ckpt
    )
    # last.ckpt after every epoch, for resuming: its own callback, because Lightning's save_last writes it only in an
    # epoch whose best checkpoint was also written (an epoch that did not improve would be lost to a kill)
    latest = ModelCheckpoint(run_dir / "checkpoints", filename="last", save_top_k=1, enable_version_counter=False)
    # a resumed run logs into logs/resume_N/: Lightning's CSVLogger would delete the earlier epochs' metrics.csv
    version = f"resume_{len(list((run_dir / 'logs').glob('resume_*'))) + 1}" if resume and last.exists() else ""
    bar = [RunProgressBar()] if cfg.train.progress_bar else []
    trainer = _trainer(
        cfg,
        max_epochs=cfg.train.epochs,
        precision=cfg.train.precision,
        callbacks=[best, latest, EpochLine(), *bar, *callbacks],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        logger=[
            CSVLogger(run_dir, name="logs", version=version),
            TensorBoardLogger(run_dir, name="tensorboard", version=version),
        ],
        enable_progress_bar=cfg.train.progress_bar,
        log_every_n_steps=10,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # inside Lightning, about torch's own API
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        # CatMetric gathers the validation set across processes, so the logged values are already global
        warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
        # only a resumed run finds checkpoints in its folder (a new run refuses a used one): they are its own
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
        try:
            # weights_only: the resumed checkpoint is read with torch's safe unpickler too (read first by
            # resumed_config, which names the file if it holds anything else)
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.exists() else None,
                        weights_only=True)  # fmt: skip
        except SIGTERMException:
            # Lightning turns SIGTERM into SystemExit() after saving nothing more: exit status 0, which a caller such
            # as `bench` would read as a finished run. 143 (128 + SIGTERM) says it was stopped. DDP's other processes
            # exit 0: Lightning kills process 0 as soon as one of them exits non-zero, cutting its teardown short.
            if not trainer.is_global_zero:
                raise SystemExit(0) from None
            log.error("%s: stopped by SIGTERM; `clcpmt train --resume %s` continues it", run_dir, run_dir)
            raise SystemExit(128 + signal.SIGTERM) from None
    if not trainer.is_global_zero:  # distributed: process 0 alone evaluates and writes metrics.json
        return None
    results = evaluate_parts(best.best_model_path or str(last), data, ("validation", "testing"), verbose=False)
    results["best_epoch"] = int(read_checkpoint(best.best_model_path)["epoch"]) if best.best_model_path else -1
    results["weights"] = module.weights_source  # where the backbone's starting weights came from (model card)
    plot_training(run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    testing_outputs(run_dir, results["checkpoint"], data)  # the teacher on the testing split, for the report
    (run_dir / "MODEL_CARD.md").write_text(model_card(run_dir, cfg))
    write_report([run_dir], run_dir / "report.html")
    for part in ("validation", "testing"):
        r = results[f"{part}/teacher"]
        keys = [k for k in ("standard/auc", "standard/bacc", "standard/f1") if k in r]
        heads = "  ".join(f"{k.split('/')[1]} {r[k]:.2f}" for k in keys)
        log.info("%s (teacher, best epoch %d): %s", part, results["best_epoch"] + 1, heads)
    log.info("per class, curves and plots: %s; model card: %s", run_dir / "report.html", run_dir / "MODEL_CARD.md")
    return run_dir


PARTIAL = ".partial"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that a kill cannot leave half done: the bytes go to a temporary file in the checkpoint's
    own folder (Lightning's writer stages them in the system temp folder, and a move across file systems is a copy
    that a kill can cut short), are flushed and fsynced, then renamed over the old file."""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: object = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def clean_partial_checkpoints(folder: Path) -> None:
    """Remove the temporary files that killed checkpoint writes left behind."""
    for leftover in folder.glob(f"*{PARTIAL}") if folder.is_dir() else []:
        leftover.unlink()


# Settings a resumed run may change: where things are and how they run, never what is trained on or how.
RESUMABLE_KEYS = {
    "run_dir", "data.images", "data.labels", "data.train_list", "data.val_list", "data.test_list", "data.cache_dir",
    "data.num_workers", "train.accelerator", "train.devices", "train.progress_bar",
    "data.splits",  # a resumed run reads its own split files whatever this says (resumed_config)
}  # fmt: skip


def changed_settings(before: dict, after: dict) -> list[str]:
    """Flat keys ("section.key") whose values differ between two `to_dict` configs, RESUMABLE_KEYS excepted."""

    def flat(d: dict) -> dict:
        out = {}
        for section, value in d.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            out |= {f"{section}.{k}".rstrip("."): v for k, v in items}
        return out

    a, b = flat(before), flat(after)
    keys = sorted(set(a) | set(b))
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in keys if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)]


def resumed_config(cfg: Config, last: Path) -> Config:
    """The config a resumed run continues with: the run's own split files, and no change of data, model or method
    since the run started (its last checkpoint's config, or config.yaml when it was killed before one)."""
    run_dir = Path(cfg.run_dir)
    started = read_checkpoint(last)["hyper_parameters"]["config"] if last.is_file() else None
    if started is None:
        started = to_dict(load_config(run_dir / "config.yaml"))
    started = with_defaults(started)
    if not cfg.model.mean and isinstance(started.get("model"), dict):  # left unset: the run's own normalisation
        kept = {k: tuple(started["model"].get(k) or ()) for k in ("mean", "std")}
        cfg = replace(cfg, model=replace(cfg.model, **kept))
    changed = changed_settings({**started, "run_dir": ""}, {**to_dict(cfg), "run_dir": ""})
    if changed:
        raise ConfigError(f"--resume {run_dir}: the run started with other settings: {'; '.join(changed)}. A resumed "
                          "run continues the run it was: undo the change, or start a new run with another run_dir "
                          "(e.g. --config <run>/config.yaml --run_dir <new> plus the change)")  # fmt: skip
    return replace(cfg, data=run_data(cfg, run_dir))  # exactly the run's own parts
