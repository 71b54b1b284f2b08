"""From a DataConfig to a PreparedData: read (or generate) each kind of dataset, split it, cache its images
(method.md §5)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ISIC_CLASSES, DataConfig
from .chestxray import (
    CXR14_FINDINGS,
    draw_labeled_multilabel,
    find_images,
    read_data_entry,
    read_image_list,
    read_medmnist,
    resolve_names,
    split_by_patient,
    subset,
    write_multilabel_csv,
)
from .readers import DataError, LabelTable, cached_images, read_labels, resolve_images
from .splits import SPLIT_FILES, draw_labeled, split_train_val_test, write_split_csv
from .synthetic import FINDINGS, make_synthetic, make_synthetic_multilabel

log = logging.getLogger(__name__)
PARTS = ("labeled", "unlabeled", "validation", "testing")
ORDER = ("training", "validation", "testing")


@dataclass
class PreparedData:
    """All images of a run and which of them belong to each part.

    images: (N, S, S, 3) uint8; targets: (N,) class indices (task "single") or (N, C) 0/1 (task "multi").
    """

    classes: tuple[str, ...]
    names: list[str]
    images: np.ndarray
    targets: np.ndarray
    parts: dict[str, np.ndarray]  # PARTS -> indices into images
    task: str = "single"

    def write_splits(self, folder: str | Path) -> None:
        """Write every part in SRC-MT's CSV format; the folder can be passed back as data.splits."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write = write_split_csv if self.task == "single" else write_multilabel_csv
        train = np.concatenate([self.parts["labeled"], self.parts["unlabeled"]])
        for part, idx in [*self.parts.items(), ("training", train)]:
            write(folder / f"{part}.csv", [self.names[i] for i in idx], self.targets[idx], self.classes)


def default_classes(cfg: DataConfig, num_medmnist: int = 0) -> tuple[str, ...]:
    if cfg.classes:
        return tuple(cfg.classes)
    return {"chestxray14": CXR14_FINDINGS, "synthetic_multilabel": FINDINGS,
            "medmnist": tuple(str(i) for i in range(num_medmnist))}.get(cfg.dataset, ISIC_CLASSES)  # fmt: skip


def _rows(table: LabelTable, idx: np.ndarray) -> LabelTable:
    return subset(table, [table.images[i] for i in idx], table.source)


def _check_against_labels(tables: list[LabelTable], labels: LabelTable) -> None:
    """Every split row must agree with the label file: catches a split written for another label set."""
    truth = dict(zip(labels.images, labels.targets, strict=True))
    for t in tables:
        for image, target, line in zip(t.images, t.targets, t.lines, strict=True):
            if image not in truth:
                raise DataError(f"{t.source}, line {line}: image '{image}' is not in the label file {labels.source}")
            if not np.array_equal(truth[image], target):
                said = t.classes[target] if np.ndim(target) == 0 else target.tolist()
                says = labels.classes[truth[image]] if np.ndim(target) == 0 else truth[image].tolist()
                raise DataError(
                    f"{t.source}, line {line}: image '{image}' is labeled {said} but {labels.source} says {says}"
                )


def _read_split_folder(cfg: DataConfig, classes: tuple[str, ...], task: str) -> dict[str, LabelTable]:
    folder = Path(cfg.splits)
    files = {name: folder / f for name, f in SPLIT_FILES.items()}
    if (folder / "labeled.csv").is_file():  # a run's own split folder: repeat its labeled draw exactly
        files["labeled"] = folder / "labeled.csv"
    tables = {name: read_labels(path, classes, task) for name, path in files.items()}
    seen: dict[str, str] = {}
    for name in ORDER:
        for image in tables[name].images:
            if image in seen:
                raise DataError(f"image '{image}' is in both {seen[image]} and {tables[name].source}")
            seen[image] = tables[name].source
    return tables


def _labeled_positions(tables: dict[str, LabelTable], cfg: DataConfig, task: str) -> tuple[np.ndarray, np.ndarray]:
    train = tables["training"]
    if "labeled" not in tables:
        draw = draw_labeled if task == "single" else draw_labeled_multilabel
        return draw(train.targets, cfg.labeled, seed=cfg.seed)
    position = {image: i for i, image in enumerate(train.images)}
    lab = tables["labeled"]
    missing = [(im, n) for im, n in zip(lab.images, lab.lines, strict=True) if im not in position]
    if missing:
        raise DataError(f"{lab.source}, line {missing[0][1]}: image '{missing[0][0]}' is not in {train.source}")
    lab_idx = np.sort([position[im] for im in lab.images])
    return lab_idx, np.setdiff1d(np.arange(len(train.images)), lab_idx)


def _assemble(tables: dict[str, LabelTable], paths: list[Path], cfg: DataConfig, task: str) -> PreparedData:
    """Concatenate training, validation, testing (in that order) and cache their images."""
    names = [im for s in ORDER for im in tables[s].images]
    targets = np.concatenate([tables[s].targets for s in ORDER])
    images = cached_images(paths, cfg.image_size, cfg.center_crop, cfg.cache_dir)
    n_train, n_val = len(tables["training"].images), len(tables["validation"].images)
    lab, unl = _labeled_positions(tables, cfg, task)
    parts = {"labeled": lab, "unlabeled": unl, "validation": np.arange(n_train, n_train + n_val),
             "testing": np.arange(n_train + n_val, len(names))}  # fmt: skip
    return PreparedData(tables["training"].classes, names, images, targets, parts, task)


def _folder(cfg: DataConfig) -> PreparedData:
    """An image folder with a single-label CSV; splits from cfg.splits or drawn 7:1:2."""
    classes = default_classes(cfg)
    if cfg.splits:
        tables = _read_split_folder(cfg, classes, "single")
        if cfg.labels:
            _check_against_labels(list(tables.values()), read_labels(cfg.labels, classes))
    else:
        full = read_labels(cfg.labels, classes)
        tables = {
            n: _rows(full, i) for n, i in zip(ORDER, split_train_val_test(full.targets, seed=cfg.seed), strict=True)
        }
    paths = [p for s in ORDER for p in resolve_images(tables[s], cfg.images)]
    return _assemble(tables, paths, cfg, "single")


def _chestxray14(cfg: DataConfig) -> PreparedData:
    """NIH ChestX-ray14: labels from Data_Entry; official lists; validation held out by patient."""
    entry = read_data_entry(cfg.labels, default_classes(cfg))
    if cfg.splits:
        tables = _read_split_folder(cfg, entry.classes, "multi")
        _check_against_labels(list(tables.values()), entry)
        tables = {k: subset(entry, list(t.images), t.source) for k, t in tables.items()}  # patients from Data_Entry
    else:
        train = subset(entry, read_image_list(cfg.train_list), cfg.train_list)
        test = subset(entry, read_image_list(cfg.test_list), cfg.test_list)
        if cfg.val_list:
            val = subset(entry, read_image_list(cfg.val_list), cfg.val_list)
            held = set(val.images)
            train = _rows(train, np.array([i for i, im in enumerate(train.images) if im not in held], dtype=np.int64))
        else:
            keep, out = split_by_patient(train.patients, cfg.val_fraction, seed=cfg.seed)
            train, val = _rows(train, keep), _rows(train, out)
        tables = {"training": train, "validation": val, "testing": test}
    shared = set(tables["training"].patients) & (set(tables["validation"].patients) | set(tables["testing"].patients))
    if shared:
        log.warning("%d patients have images in training and in validation or testing", len(shared))
    found = find_images(cfg.images)
    paths = [p for s in ORDER for p in resolve_names(tables[s], found, cfg.images)]
    return _assemble(tables, paths, cfg, "multi")


def _medmnist(cfg: DataConfig) -> PreparedData:
    """A MedMNIST .npz: its train/val/test splits; the labeled subset drawn from train."""
    splits = read_medmnist(cfg.labels)
    images = np.concatenate([splits[s][0] for s in ("train", "val", "test")])
    targets = np.concatenate([splits[s][1] for s in ("train", "val", "test")])
    task = "multi" if targets.ndim == 2 else "single"
    classes = default_classes(cfg, targets.shape[1] if task == "multi" else int(targets.max()) + 1)
    if images.shape[1] != cfg.image_size:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(im).resize((cfg.image_size,) * 2, Image.Resampling.BILINEAR))
                           for im in images])  # fmt: skip
    n_train, n_val = len(splits["train"][1]), len(splits["val"][1])
    draw = draw_labeled if task == "single" else draw_labeled_multilabel
    lab, unl = draw(targets[:n_train], cfg.labeled, seed=cfg.seed)
    parts = {"labeled": lab, "unlabeled": unl, "validation": np.arange(n_train, n_train + n_val),
             "testing": np.arange(n_train + n_val, len(targets))}  # fmt: skip
    names = [f"{s}_{i:06d}" for s in ("train", "val", "test") for i in range(len(splits[s][1]))]
    return PreparedData(classes, names, images, targets, parts, task)


def _synthetic(cfg: DataConfig) -> PreparedData:
    multi = cfg.dataset == "synthetic_multilabel"
    if multi:
        images, targets = make_synthetic_multilabel(cfg.synthetic_size, cfg.image_size, 2018, cfg.synthetic_contrast)
        train, rest = draw_labeled_multilabel(targets, 0.7, seed=cfg.seed)
        val_pos, test_pos = draw_labeled_multilabel(targets[rest], 1 / 3, seed=cfg.seed + 1)
        val, test = rest[val_pos], rest[test_pos]
        lab, unl = draw_labeled_multilabel(targets[train], cfg.labeled, seed=cfg.seed)
    else:
        images, targets = make_synthetic(cfg.synthetic_size, cfg.image_size, seed=2018)
        train, val, test = split_train_val_test(targets, seed=cfg.seed)
        lab, unl = draw_labeled(targets[train], cfg.labeled, seed=cfg.seed)
    parts = dict(zip(PARTS, (train[lab], train[unl], val, test), strict=True))
    names = [f"synthetic_{i:05d}" for i in range(len(targets))]
    return PreparedData(default_classes(cfg), names, images, targets, parts, "multi" if multi else "single")


SOURCES = {"synthetic": _synthetic, "synthetic_multilabel": _synthetic, "folder": _folder,
           "chestxray14": _chestxray14, "medmnist": _medmnist}  # fmt: skip


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read (or generate), split and cache the images that cfg describes."""
    return SOURCES[cfg.dataset](cfg)
