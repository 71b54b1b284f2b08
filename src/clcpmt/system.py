"""The system a config describes (student, method, Lightning module), and the same system read back from a
checkpoint: what training, evaluation, prediction, export and the report all start from."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import replace
from pathlib import Path

import torch

from .config import (
    FILE_DATASETS,
    CheckpointError,
    Config,
    DataConfig,
    config_from_dict,
    rampup_epochs,
    to_dict,
)
from .methods import METHODS, method_from_config
from .model import create_student, normalization
from .module import SSLModule

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
    m, t = cfg.method, cfg.train
    context = {"rampup_epochs": rampup_epochs(cfg), "prior": prior, "proj_dim": cfg.model.proj_dim}
    # what only the data decides (method.debias on multi-label data) is checked where the method is built: a
    # ConfigError from there; any other error is a bug and keeps its traceback
    method = method_from_config(m, len(classes), num_unlabeled, task, **context)
    module = SSLModule(
        student,
        method,
        classes,
        config=to_dict(cfg),
        ema_decay=m.ema_decay,
        lr=t.lr,
        weight_decay=t.weight_decay,
        schedule=t.schedule,
        lr_decay=t.lr_decay,
        epochs=t.epochs,
        steps_per_epoch=steps_per_epoch,
        channels_last=t.channels_last,
        task=task,
        optimizer=t.optimizer,
        teacher_bn=m.teacher_bn,
        mean=cfg.model.mean,
        std=cfg.model.std,
    )
    module.weights_source = source
    return module


def run_data(cfg: Config, run_dir: Path) -> DataConfig:
    """cfg's data section, reading a file-based data set's split files from the run's own folder when it has them:
    exactly the images the run was trained against, even if the split files it was given have changed since."""
    own = Path(run_dir) / "splits"
    if cfg.data.dataset not in FILE_DATASETS:
        return cfg.data
    if (own / "testing.csv").is_file():
        return replace(cfg.data, splits=str(own))
    log.warning(f"{own}: no split files of the run (testing.csv); using data.splits of its config "
                f"({cfg.data.splits or 'drawn from data.seed'}), which may have changed since it trained")  # fmt: skip
    return cfg.data


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


def load_system(checkpoint: str | Path, announce: bool = True, ckpt: dict | None = None) -> tuple[SSLModule, Config]:
    """Rebuild the system stored in a checkpoint (its config travels inside it). `ckpt`: the file's contents, when
    the caller has read them already (read_checkpoint), so a large file is not read twice."""
    checkpoint = Path(checkpoint)
    if ckpt is None:
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
