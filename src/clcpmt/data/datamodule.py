"""From a DataConfig to tensors: read labels and splits, cache images, build the SSL batches (SPEC §3, §5)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from .readers import DataError, LabelTable, cached_images, read_labels, resolve_images
from .splits import SPLIT_FILES, draw_labeled, split_train_val_test, write_split_csv
from .synthetic import make_synthetic
from .transforms import normalize, strong_transform, weak_transform

PARTS = ("labeled", "unlabeled", "validation", "testing")


@dataclass
class PreparedData:
    """All images of a run and which of them belong to each part. images: (N, S, S, 3) uint8; targets: (N,)."""

    classes: tuple[str, ...]
    names: list[str]
    images: np.ndarray
    targets: np.ndarray
    parts: dict[str, np.ndarray]  # PARTS -> indices into images

    def write_splits(self, folder: str | Path) -> None:
        """Write every part in SRC-MT's CSV format; the folder can be passed back as data.splits."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        train = np.concatenate([self.parts["labeled"], self.parts["unlabeled"]])
        for part, idx in [*self.parts.items(), ("training", train)]:
            write_split_csv(folder / f"{part}.csv", [self.names[i] for i in idx], self.targets[idx], self.classes)


def _check_against_labels(tables: list[LabelTable], labels: LabelTable) -> None:
    """Every split row must agree with the label file: catches a split written for another label set."""
    truth = dict(zip(labels.images, labels.targets, strict=True))
    for t in tables:
        for image, target, line in zip(t.images, t.targets, t.lines, strict=True):
            if image not in truth:
                raise DataError(f"{t.source}, line {line}: image '{image}' is not in the label file {labels.source}")
            if truth[image] != target:
                raise DataError(
                    f"{t.source}, line {line}: image '{image}' is labeled {t.classes[target]} but "
                    f"{labels.source} says {labels.classes[truth[image]]}"
                )


def _tables(cfg: DataConfig) -> dict[str, LabelTable]:
    """Label tables per split, read from cfg.splits or drawn 7:1:2 from cfg.labels."""
    if not cfg.splits:
        full = read_labels(cfg.labels, cfg.classes)
        parts = split_train_val_test(full.targets, seed=cfg.seed)
        return {
            name: LabelTable(
                tuple(full.images[i] for i in idx),
                full.targets[idx],
                full.classes,
                full.source,
                tuple(full.lines[i] for i in idx),
            )
            for name, idx in zip(SPLIT_FILES, parts, strict=True)
        }
    folder = Path(cfg.splits)
    files = {name: folder / f for name, f in SPLIT_FILES.items()}
    if (folder / "labeled.csv").is_file():  # a run's own split folder: repeat its labeled draw exactly
        files["labeled"] = folder / "labeled.csv"
    tables = {name: read_labels(path, cfg.classes) for name, path in files.items()}
    seen: dict[str, str] = {}
    for name in SPLIT_FILES:
        for image in tables[name].images:
            if image in seen:
                raise DataError(f"image '{image}' is in both {seen[image]} and {tables[name].source}")
            seen[image] = tables[name].source
    if cfg.labels:
        _check_against_labels(list(tables.values()), read_labels(cfg.labels, cfg.classes))
    return tables


def _labeled_positions(tables: dict[str, LabelTable], cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    train = tables["training"]
    if "labeled" not in tables:
        return draw_labeled(train.targets, cfg.labeled, seed=cfg.seed)
    position = {image: i for i, image in enumerate(train.images)}
    lab = tables["labeled"]
    missing = [(im, n) for im, n in zip(lab.images, lab.lines, strict=True) if im not in position]
    if missing:
        raise DataError(f"{lab.source}, line {missing[0][1]}: image '{missing[0][0]}' is not in {train.source}")
    lab_idx = np.sort([position[im] for im in lab.images])
    return lab_idx, np.setdiff1d(np.arange(len(train.images)), lab_idx)


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read (or generate), split and cache the images that cfg describes."""
    if cfg.dataset == "synthetic":
        images, targets = make_synthetic(cfg.synthetic_size, cfg.image_size, seed=2018)
        names = [f"synthetic_{i:05d}" for i in range(len(targets))]
        train, val, test = split_train_val_test(targets, seed=cfg.seed)
        lab, unl = draw_labeled(targets[train], cfg.labeled, seed=cfg.seed)
        parts = dict(zip(PARTS, (train[lab], train[unl], val, test), strict=True))
        return PreparedData(tuple(cfg.classes), names, images, targets, parts)
    tables = _tables(cfg)
    order = ("training", "validation", "testing")
    names = [im for s in order for im in tables[s].images]
    paths = [p for s in order for p in resolve_images(tables[s], cfg.images)]
    targets = np.concatenate([tables[s].targets for s in order])
    images = cached_images(paths, cfg.image_size, cfg.center_crop, cfg.cache_dir)
    n_train, n_val = len(tables["training"].images), len(tables["validation"].images)
    lab, unl = _labeled_positions(tables, cfg)
    parts = {
        "labeled": lab,
        "unlabeled": unl,
        "validation": np.arange(n_train, n_train + n_val),
        "testing": np.arange(n_train + n_val, len(names)),
    }
    return PreparedData(tuple(cfg.classes), names, images, targets, parts)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, H, W) uint8, a writable copy of the cached row


class LabeledViews(Dataset):
    """Two weak views of each labeled image and its label."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, index: np.ndarray, size: int) -> None:
        self.images, self.targets, self.index, self.weak = images, targets, index, weak_transform(size)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = item
        img = _tensor(self.images[self.index[i]])
        x1, x2 = _seeded(seed, lambda: (self.weak(img), self.weak(img)))
        return x1, x2, int(self.targets[self.index[i]])


class UnlabeledViews(Dataset):
    """Teacher's weak view, student's view (strong or weak), the hidden label (-1 if unknown) and the position."""

    def __init__(
        self, images: np.ndarray, targets: np.ndarray | None, index: np.ndarray, size: int, strong: bool
    ) -> None:
        self.images, self.targets, self.index = images, targets, index
        self.weak = weak_transform(size)
        self.student = strong_transform(size) if strong else self.weak

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        i, seed = item
        img = _tensor(self.images[self.index[i]])
        hidden = -1 if self.targets is None else int(self.targets[self.index[i]])
        weak, student = _seeded(seed, lambda: (self.weak(img), self.student(img)))
        return weak, student, hidden, i


class EvalImages(Dataset):
    """Normalised images (no augmentation) and their labels."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, index: np.ndarray) -> None:
        self.images, self.targets, self.index, self.norm = images, targets, index, normalize()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.norm(_tensor(self.images[self.index[i]])), int(self.targets[self.index[i]])


class EpochSampler(Sampler[tuple[int, int]]):
    """`num_samples` (index, augmentation seed) pairs from successive permutations, all drawn from (seed, epoch).

    Every view is then a pure function of (seed, epoch, position): a run resumed from a checkpoint draws exactly the
    batches of the uninterrupted run, whatever the number of workers (Lightning calls `set_epoch` each epoch).
    """

    def __init__(self, size: int, num_samples: int, seed: int = 0) -> None:
        self.size, self.num_samples, self.seed, self.epoch = size, num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rounds = math.ceil(self.num_samples / self.size)
        index = torch.cat([torch.randperm(self.size, generator=g) for _ in range(rounds)])[: self.num_samples]
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=g)
        return iter(zip(index.tolist(), seeds.tolist(), strict=True))


def _seeded(seed: int, fn: Callable[[], tuple]) -> tuple:
    """Run `fn` with the global torch RNG seeded by `seed`, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


class SSLDataModule(L.LightningDataModule):
    """Labeled + unlabeled training batches (both sampled for steps_per_epoch steps) and a validation loader."""

    def __init__(
        self,
        data: PreparedData,
        image_size: int,
        batch_labeled: int = 12,
        batch_unlabeled: int = 36,
        steps_per_epoch: int = 0,
        num_workers: int = 2,
        use_unlabeled: bool = True,
        strong: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.data, self.image_size = data, image_size
        self.batch_labeled, self.batch_unlabeled = batch_labeled, batch_unlabeled
        self.num_workers, self.use_unlabeled, self.strong, self.seed = num_workers, use_unlabeled, strong, seed
        n_unl = len(data.parts["unlabeled"])
        default = math.ceil(n_unl / batch_unlabeled) if n_unl else math.ceil(len(data.parts["labeled"]) / batch_labeled)
        self.steps_per_epoch = steps_per_epoch or default
        if use_unlabeled and n_unl == 0:
            raise DataError(
                "this method needs unlabeled images, but data.labeled leaves none; use method.name=supervised"
            )

    def _loader(self, dataset: Dataset, batch: int, workers: int) -> DataLoader:
        sampler = EpochSampler(len(dataset), self.steps_per_epoch * batch, self.seed + batch)
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> CombinedLoader:
        d, size = self.data, self.image_size
        workers = max(self.num_workers // 2, 1) if self.num_workers and self.use_unlabeled else self.num_workers
        loaders = {
            "labeled": self._loader(
                LabeledViews(d.images, d.targets, d.parts["labeled"], size), self.batch_labeled, workers
            )
        }
        if self.use_unlabeled:
            unl = UnlabeledViews(d.images, d.targets, d.parts["unlabeled"], size, self.strong)
            loaders["unlabeled"] = self._loader(unl, self.batch_unlabeled, self.num_workers)
        return CombinedLoader(loaders, mode="min_size")

    def eval_loader(self, part: str) -> DataLoader:
        """Loader over one part ('validation', 'testing', ...) in file order."""
        ds = EvalImages(self.data.images, self.data.targets, self.data.parts[part])
        return DataLoader(ds, batch_size=128, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("validation")
