"""Train, evaluate and predict: what the CLI commands do, as plain functions."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import signal
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from .config import (
    CheckpointError,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    rampup_epochs,
    save_config,
    to_dict,
    with_defaults,
)
from .console import EpochLine, RunProgressBar, quiet_lightning_logs
from .data.datamodule import EvalImages, SSLDataModule
from .data.readers import IMAGE_EXTENSIONS, DataError, cached_images, load_image, read_labels, resolve_images
from .data.sources import PreparedData, prepare_data
from .export import model_card
from .losses import class_prior, probabilities
from .methods import METHODS, build_method
from .metrics import f1_thresholds, format_report, multilabel_metrics, srcmt_metrics, standard_metrics
from .model import check_model, create_student, normalization
from .module import SSLModule
from .plots import plot_training
from .report import write_report  # at import, not at the run's end: a file edited during a long run is not mixed in

log = logging.getLogger("clcpmt")


def build_system(
    cfg: Config,
    classes: tuple[str, ...],
    num_unlabeled: int,
    steps_per_epoch: int,
    task: str = "single",
    prior: torch.Tensor | None = None,
    from_checkpoint: bool = False,
) -> SSLModule:
    """Student (timm backbone) + method + Lightning system, as cfg says. prior: (C,) labeled prior (class_prior)
    for method.class_balance; None when a checkpoint will supply it. from_checkpoint: a checkpoint's weights replace
    the initial ones at once, so start from random init without logging it (the caller names the checkpoint; the
    model.pretrained file need not exist any more)."""
    cfg = with_normalization(cfg)
    student, source = create_student(
        cfg.model.backbone,
        len(classes),
        "none" if from_checkpoint else cfg.model.pretrained,
        cfg.model.proj_dim,
        cfg.model.drop_rate,
        quiet=from_checkpoint,
    )
    m = cfg.method
    if m.debias and task != "single":
        raise ConfigError(f"method.debias is for single-label data; this data set is {task}-label")
    method = build_method(
        m.name,
        len(classes),
        num_unlabeled,
        task,
        lambda_mt=m.lambda_mt,
        lambda_sde=m.lambda_sde,
        lambda_pl=m.lambda_pl,
        rampup_epochs=rampup_epochs(cfg),
        sde_temperature=m.sde_temperature,
        tau=m.tau,
        tau_min=m.tau_min,
        momentum=m.momentum,
        warmup_epochs=m.warmup_epochs,
        status=m.status,
        mt_on_labeled=m.mt_on_labeled,
        tau_negative=m.tau_negative,
        lambda_fair=m.lambda_fair,
        class_balance=m.class_balance,
        balance_strength=m.balance_strength,
        prior=prior,
        sde_bank=m.sde_bank,
        proj_dim=cfg.model.proj_dim,
        debias=m.debias,
        debias_momentum=m.debias_momentum,
        debias_target=m.debias_target,
    )
    t = cfg.train
    module = SSLModule(
        student,
        method,
        classes,
        to_dict(cfg),
        m.ema_decay,
        t.lr,
        t.weight_decay,
        t.schedule,
        t.lr_decay,
        t.epochs,
        steps_per_epoch,
        t.channels_last,
        task,
        t.optimizer,
        m.teacher_bn,
        mean=cfg.model.mean,
        std=cfg.model.std,
    )
    module.weights_source = source
    return module


def with_normalization(cfg: Config) -> Config:
    """cfg with model.mean / model.std resolved (the weights' own statistics unless set), so that the run's config,
    its checkpoints and every later evaluate, predict and export normalise as training did."""
    if cfg.model.mean:
        return cfg
    mean, std = normalization(cfg.model.backbone, cfg.model.pretrained)
    return replace(cfg, model=replace(cfg.model, mean=mean, std=std))


def student_sees_strong(method: str, student_view: str) -> bool:
    """Whether the student trains on a strong view of the unlabeled images.

    `student_view` (default | strong | weak) applies to the teacher-based methods; the FixMatch family trains on the
    strong view by definition, so for them it is ignored with a log line.
    """
    recipe = METHODS[method]
    if student_view == "default":
        return recipe.strong
    if recipe.pl_source == "student":
        if student_view != "strong":
            log.info("method.student_view=%s ignored: %s trains on the strong view by definition", student_view, method)
        return True
    return student_view == "strong"


def writable_folder(folder: Path, key: str) -> None:
    """Create `folder` if needed and check that a file can be written in it, before any long work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".clcpmt-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{key} {folder} is not writable ({e}); choose a folder you can write") from None


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


def _trainer(cfg: Config, **kwargs) -> L.Trainer:
    """Lightning's Trainer on cfg.train's accelerator and devices, its device banner ("GPU available: ...", "TPU
    available: ...") replaced by one line of ours, and a device request the machine cannot meet a ConfigError."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    banner = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banner.level
    banner.setLevel(logging.WARNING)
    try:
        trainer = L.Trainer(accelerator=cfg.train.accelerator, devices=cfg.train.devices, **kwargs)
    except MisconfigurationException as e:
        asked = f"train.accelerator={cfg.train.accelerator}, train.devices={cfg.train.devices}"
        raise ConfigError(f"{asked}: {e}") from None
    finally:
        banner.setLevel(level)
    kind = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
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


def run_checkpoint(target: str, which: str) -> Path:
    """The checkpoint of a run folder (best: the one its metrics.json was computed from) or the file given."""
    path = Path(target)
    if not path.is_dir():
        return path
    metrics = path / "metrics.json"
    if which == "best" and metrics.is_file():
        try:
            named = json.loads(metrics.read_text()).get("checkpoint", "")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{metrics} is not valid JSON ({e}); pass a checkpoint file instead") from None
        if named:  # the file name only: the folder may have moved
            return path / "checkpoints" / Path(named).name
    return path / "checkpoints" / f"{which}.ckpt"


def read_checkpoint(path: str | Path) -> dict:
    """torch.load of a clcpmt checkpoint with torch's safe unpickler (tensors and plain values only: a file someone
    sent can never run code here), or one clear error naming the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the safe unpickler refused a global: a class or function to call
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(f"{path} holds objects other than tensors and plain values; clcpmt loads only "
                                  "those (torch.load weights_only=True) and never runs code from a file, so it "
                                  "does not open this one") from None  # fmt: skip
        raise CheckpointError(f"{path} is not a readable checkpoint ({e})") from None
    except Exception as e:  # truncated (EOFError, RuntimeError), not a zip (pickle errors), unreadable (OSError)
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); a run folder's "
                              "best.ckpt and last.ckpt are the checkpoints clcpmt writes") from None  # fmt: skip
    if not isinstance(ckpt, dict) or "config" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is not a clcpmt checkpoint (no hyper_parameters.config in it)")
    return ckpt


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
    if cfg.data.dataset in ("folder", "chestxray14") and (run_dir / "splits" / "testing.csv").is_file():
        cfg = replace(cfg, data=replace(cfg.data, splits=str(run_dir / "splits")))  # exactly the run's own parts
    return cfg


def load_system(checkpoint: str | Path, announce: bool = True) -> tuple[SSLModule, Config]:
    """Rebuild the system stored in a checkpoint (its config travels inside it)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    ckpt = read_checkpoint(checkpoint)
    # model.pretrained as the run started (model card); a run from before model.mean/std normalised as it resolves
    cfg = with_normalization(config_from_dict(ckpt["hyper_parameters"]["config"]))
    hp = ckpt["hyper_parameters"]
    size = _table_size(ckpt)
    module = build_system(cfg, tuple(hp["classes"]), size, hp["steps_per_epoch"], hp["task"], from_checkpoint=True)
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:  # missing / unexpected / mis-shaped tensors
        first = str(e).strip().splitlines()[1].strip() if len(str(e).strip().splitlines()) > 1 else str(e)
        raise CheckpointError(f"{checkpoint} does not fit the model its own config builds ({first}); it may come "
                              "from another version of clcpmt") from None  # fmt: skip
    if announce:
        epoch = ckpt["epoch"] + 1 if isinstance(ckpt.get("epoch"), int) else "?"
        log.info("%s (epoch %s): teacher and student weights from this checkpoint", checkpoint, epoch)
    return module.eval(), cfg


def _table_size(ckpt: dict) -> int:
    """Unlabeled-set size, from the count-status table when the checkpoint has one."""
    tables = [v for k, v in ckpt["state_dict"].items() if k.endswith("status.table")]
    return len(tables[0]) if tables else 0


@torch.no_grad()
def predict_probs(module: SSLModule, images: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
    """Teacher and student probabilities (N, C) for images[index]."""
    mean, std = module.normalization
    ds = EvalImages(images, np.zeros(len(images), dtype=np.int64), index, mean=mean, std=std)
    loader = DataLoader(ds, batch_size=128)
    out: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    for x, _ in loader:
        x = x.to(memory_format=module.memory_format)
        out["teacher"].append(module(x))
        out["student"].append(probabilities(module.student(x)[0], module.task))
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(
    probs: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...], thresholds: torch.Tensor | None = None
) -> dict:
    """Both protocols as plain floats (percent), per-class values keyed by class name.

    Multi-label: F1 at `thresholds` (chosen on validation), srcmt binarised at 0.5.
    """
    multi = targets.ndim == 2
    s = multilabel_metrics(probs, targets, thresholds) if multi else standard_metrics(probs, targets)
    m = srcmt_metrics(probs, targets, 0.5) if multi else srcmt_metrics(probs, targets)
    out = {f"standard/{k}": 100 * float(s[k]) for k in ("auc", "bacc", "f1") if k in s}
    out |= {f"srcmt/{k}": 100 * float(v) for k, v in m.items()}
    for key in ("auc_c", "sens_c", "spec_c", "f1_c"):
        out |= {f"{key[:-2]}/{c}": 100 * float(v) for c, v in zip(classes, s[key], strict=True)}
    if multi:
        out |= {f"threshold/{c}": float(v) for c, v in zip(classes, s["thresholds"], strict=True)}
    else:
        out["confusion"] = s["confusion"].tolist()
    return out


def evaluate_parts(checkpoint: str | Path, data: PreparedData, parts: tuple[str, ...], verbose: bool = True) -> dict:
    """Evaluate teacher and student of `checkpoint` on parts of `data`; prints the reports.

    Multi-label F1 thresholds are chosen per finding on the validation part (when it is among `parts`, first).
    """
    module, _ = load_system(checkpoint)
    results: dict = {"checkpoint": str(checkpoint)}
    thresholds: dict[str, torch.Tensor | None] = {"teacher": None, "student": None}
    for part in sorted(parts, key=lambda p: p != "validation"):
        probs = predict_probs(module, data.images, data.parts[part])
        targets = torch.as_tensor(data.targets[data.parts[part]])
        for who, p in probs.items():
            if data.task == "multi" and part == "validation":
                thresholds[who] = f1_thresholds(p, targets)
            results[f"{part}/{who}"] = summarize(p, targets, data.classes, thresholds[who])
            if verbose:
                title = f"{part}, {who} ({Path(checkpoint).name})"
                print(format_report(p, targets, data.classes, title, thresholds[who]))
    return results


def evaluate_csv(checkpoint: str | Path, labels: str | Path, images: str | Path, verbose: bool = True) -> dict:
    """Evaluate on an external labeled set: a label CSV (any supported format) and its image folder."""
    module, cfg = load_system(checkpoint)
    table = read_labels(labels, tuple(module.classes), module.task)
    array = cached_images(resolve_images(table, images), cfg.data.image_size, cfg.data.center_crop, cfg.data.cache_dir)
    data = PreparedData(
        tuple(module.classes), list(table.images), array, table.targets, {"external": np.arange(len(table.images))},
        module.task,
    )  # fmt: skip
    return evaluate_parts(checkpoint, data, ("external",), verbose)


def list_images(source: str | Path) -> list[Path]:
    """Image files of a folder, or the paths listed one per line in a text file."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif source.is_file():
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
        for n, p in enumerate(paths, start=1):
            if not p.is_file():
                raise DataError(f"{source}, line {n}: image {p} does not exist")
    else:
        raise DataError(f"{source} is neither an image folder nor a text file listing images")
    if not paths:
        raise DataError(f"{source}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def check_out(out: Path, overwrite: bool) -> None:
    """An output file path (predict, export), checked before any decoding or inference."""
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the path of the file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    writable_folder(out.parent, "--out's folder")


def predict(
    checkpoint: str | Path, source: str | Path, out: str | Path, model: str = "teacher", overwrite: bool = False
) -> Path:
    """Write class probabilities in the ISIC submission format: image + one column per class."""
    out = Path(out)
    check_out(out, overwrite)
    if not str(source):  # Path("") would be the current folder: never guess that
        raise DataError("--images is empty; give an image folder or a text file with one image path per line")
    paths = list_images(source)
    stems = Counter(p.stem for p in paths)
    if len(stems) != len(paths):
        dup = sorted(str(p) for p in paths if stems[p.stem] > 1)
        raise DataError(f"{source}: images with the same name would get the same id: {', '.join(dup[:4])}")
    # decoded in memory: predict writes nothing but --out (the training run's cache may not be writable here)
    if Path(checkpoint).suffix == ".onnx":  # an exported model: its preprocessing is in its metadata
        from .export import onnx_metadata, onnx_probabilities

        meta = onnx_metadata(checkpoint)
        classes = tuple(json.loads(meta["classes"]))
        size, crop = int(meta["input_size"]), meta["center_crop"] == "true"
        probs = onnx_probabilities(checkpoint, np.stack([load_image(p, size, crop) for p in paths]))
    else:
        module, cfg = load_system(checkpoint)
        classes = module.classes
        array = np.stack([load_image(p, cfg.data.image_size, cfg.data.center_crop) for p in paths])
        probs = predict_probs(module, array, np.arange(len(paths)))[model].numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["image," + ",".join(classes)]
    rows += [p.stem + "," + ",".join(f"{v:.6f}" for v in row) for p, row in zip(paths, probs.tolist(), strict=True)]
    out.write_text("\n".join(rows) + "\n")
    return out
