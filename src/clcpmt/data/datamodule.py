"""The SSL batches of method.md §3: labeled views, unlabeled weak/student views, evaluation images."""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler

from .readers import DataError
from .sources import PreparedData
from .transforms import BatchViews, Stats, normalize


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, H, W) uint8, a writable copy of the cached row


class LabeledImages(Dataset):
    """A labeled image (uint8), its label and its augmentation seed; the views are made per batch (`SSLViews`)."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, index: np.ndarray) -> None:
        self.images, self.targets, self.index = images, targets, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = item
        return _tensor(self.images[self.index[i]]), torch.as_tensor(self.targets[self.index[i]]), seed


class UnlabeledImages(Dataset):
    """An unlabeled image (uint8), its hidden label (-1 if unknown), its position and its augmentation seed."""

    def __init__(self, images: np.ndarray, targets: np.ndarray | None, index: np.ndarray) -> None:
        self.images, self.targets, self.index = images, targets, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        i, seed = item
        hidden = torch.tensor(-1) if self.targets is None else torch.as_tensor(self.targets[self.index[i]])
        return _tensor(self.images[self.index[i]]), hidden, i, seed


class SSLViews:
    """Turns a training batch of uint8 images into the views of method.md §3, on the batch's device.

    labeled (images, y, seeds) -> (x1[, x2], y): `labeled_views` weak views; unlabeled (images, hidden, index, seeds)
    -> (u^w, u^s, hidden, index) with u^s strong or weak. Each image has its own random parameters, drawn from a
    generator seeded by the batch's first sampler seed, so a view is a pure function of (seed, epoch, position): a
    resumed run sees the batches of the uninterrupted one, whatever the number of workers or the device.
    """

    def __init__(self, labeled_views: int, strong: bool, *, mean: Stats, std: Stats) -> None:
        self.labeled_views, self.strong, self.views = labeled_views, strong, BatchViews(mean, std)

    @staticmethod
    def _generator(seeds: torch.Tensor, stream: int) -> torch.Generator:
        # the stream keeps labeled and unlabeled parameters apart even when both samplers drew the same seeds
        return torch.Generator().manual_seed((int(seeds[0]) + stream * 7_919) % 2**63)

    def __call__(self, batch: dict) -> dict:
        images, y, seeds = batch["labeled"]
        g = self._generator(seeds, 0)
        out = {"labeled": (*(self.views.weak(images, g) for _ in range(self.labeled_views)), y)}
        if "unlabeled" in batch:
            images, hidden, index, seeds = batch["unlabeled"]
            g = self._generator(seeds, 1)
            weak = self.views.weak(images, g)
            student = self.views.strong(images, g) if self.strong else self.views.weak(images, g)
            out["unlabeled"] = (weak, student, hidden, index)
        return out


class EvalImages(Dataset):
    """Images normalised with (mean, std) (no augmentation) and their labels."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, index: np.ndarray, *, mean: Stats, std: Stats) -> None:
        self.images, self.targets, self.index, self.norm = images, targets, index, normalize(mean, std)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm(_tensor(self.images[self.index[i]])), torch.as_tensor(self.targets[self.index[i]])


def balance_weights(targets: np.ndarray, power: float) -> np.ndarray:
    """Sampling weights that give rare classes more draws: w_i = max over i's classes c of n_c^(-power), summing to 1.

    method.md §3's optional class-balanced labeled sampler, so tail classes have positives in SDE's batch. power 0 is
    uniform, 1 class-balanced (each single-label class drawn equally often), 0.5 the square-root compromise.
    Multi-label: an image counts in each of its findings and the rarest one decides; "No Finding" (all-zero) images
    form their own group.

    Args:
        targets: (N,) class indices or (N, C) 0/1 findings.
    """
    if targets.ndim == 1:
        groups = np.eye(int(targets.max()) + 1, dtype=bool)[targets]
    else:
        groups = np.concatenate([targets > 0.5, (targets <= 0.5).all(1, keepdims=True)], axis=1)
    counts = groups.sum(0).astype(np.float64)  # (G,) images per group; each image is in >= 1 non-empty group
    per_group = np.zeros_like(counts)
    per_group[counts > 0] = counts[counts > 0] ** -power
    w = (groups * per_group).max(1)
    return w / w.sum()


class EpochSampler(Sampler[tuple[int, int]]):
    """`num_samples` (index, augmentation seed) pairs from successive permutations, all drawn from (seed, epoch).

    With `weights`, indices are drawn with replacement in those proportions instead (the class-balanced sampler).
    Every view is then a pure function of (seed, epoch, position): a run resumed from a checkpoint draws exactly the
    batches of the uninterrupted run, whatever the number of workers (Lightning calls `set_epoch` each epoch).
    """

    def __init__(self, size: int, num_samples: int, seed: int = 0, weights: np.ndarray | None = None) -> None:
        self.size, self.num_samples, self.seed, self.epoch = size, num_samples, seed, 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            index = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        else:
            rounds = math.ceil(self.num_samples / self.size)
            index = torch.cat([torch.randperm(self.size, generator=g) for _ in range(rounds)])[: self.num_samples]
        seeds = torch.randint(0, 2**62, (self.num_samples,), generator=g)
        return iter(zip(index.tolist(), seeds.tolist(), strict=True))


class SSLDataModule(L.LightningDataModule):
    """Labeled + unlabeled training batches (both sampled for steps_per_epoch steps) and a validation loader.

    The loaders carry uint8 images; their views are made per batch after the transfer to the device (`SSLViews`).
    mean, std: the normalisation of every view and evaluation image (the backbone weights' own, `model.normalization`).
    """

    def __init__(
        self,
        data: PreparedData,
        batch_labeled: int = 12,
        batch_unlabeled: int = 36,
        steps_per_epoch: int = 0,
        num_workers: int = 2,
        use_unlabeled: bool = True,
        strong: bool = True,
        seed: int = 0,
        labeled_balance: float = 0.0,
        labeled_views: int = 2,
        *,
        mean: Stats,
        std: Stats,
    ) -> None:
        super().__init__()
        self.labeled_balance, self.mean, self.std = labeled_balance, mean, std
        self.make_views = SSLViews(labeled_views, strong, mean=mean, std=std)
        self.data = data
        self.batch_labeled, self.batch_unlabeled = batch_labeled, batch_unlabeled
        self.num_workers, self.use_unlabeled, self.strong, self.seed = num_workers, use_unlabeled, strong, seed
        n_unl = len(data.parts["unlabeled"])
        default = math.ceil(n_unl / batch_unlabeled) if n_unl else math.ceil(len(data.parts["labeled"]) / batch_labeled)
        self.steps_per_epoch = steps_per_epoch or default
        if use_unlabeled and n_unl == 0:
            raise DataError(
                "this method needs unlabeled images, but data.labeled leaves none; use method.name=supervised"
            )

    def _loader(self, dataset: Dataset, batch: int, workers: int, weights: np.ndarray | None = None) -> DataLoader:
        sampler = EpochSampler(len(dataset), self.steps_per_epoch * batch, self.seed + batch, weights)
        return DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> CombinedLoader:
        d = self.data
        workers = max(self.num_workers // 2, 1) if self.num_workers and self.use_unlabeled else self.num_workers
        labeled = d.parts["labeled"]
        weights = balance_weights(d.targets[labeled], self.labeled_balance) if self.labeled_balance > 0 else None
        loaders = {
            "labeled": self._loader(LabeledImages(d.images, d.targets, labeled), self.batch_labeled, workers, weights)
        }
        if self.use_unlabeled:
            unl = UnlabeledImages(d.images, d.targets, d.parts["unlabeled"])
            loaders["unlabeled"] = self._loader(unl, self.batch_unlabeled, self.num_workers)
        return CombinedLoader(loaders, mode="min_size")

    def on_after_batch_transfer(self, batch: dict | list, dataloader_idx: int) -> dict | list:
        """Training batches (dicts) become their views here, on the device; validation batches pass unchanged."""
        return self.make_views(batch) if isinstance(batch, dict) else batch

    def eval_loader(self, part: str) -> DataLoader:
        """Loader over one part ('validation', 'testing', ...) in file order."""
        ds = EvalImages(self.data.images, self.data.targets, self.data.parts[part], mean=self.mean, std=self.std)
        return DataLoader(ds, batch_size=128, shuffle=False, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader("validation")
