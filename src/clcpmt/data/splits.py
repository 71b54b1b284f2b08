"""Splits (method.md §5): 7:1:2 train/val/test and a labeled subset, stratified by class with a seed; SRC-MT CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SPLIT_FILES = {"training": "training.csv", "validation": "validation.csv", "testing": "testing.csv"}


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Per-class counts summing to `total`, proportional to `sizes` (largest remainder), at least 1 per class
    that has 2 or more members, never more than a class has."""
    share = sizes / sizes.sum() * total
    take = np.minimum(np.floor(share).astype(int), sizes)
    take = np.where((take == 0) & (sizes >= 2) & (total >= len(sizes)), 1, take)
    while take.sum() < total:
        room = np.where(take < sizes, share - take, -np.inf)
        take[np.argmax(room)] += 1
    while take.sum() > total:
        take[np.argmax(take)] -= 1
    return take


def stratified_take(targets: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of `count` items drawn per class in proportion (and the rest). targets: (N,) class indices.

    Hand-written because scikit-learn's stratified splitters refuse classes with fewer than 2 members, which tail
    classes of small labeled fractions have.
    """
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(targets, return_inverse=True)
    take = _allocate(np.bincount(inverse), count)
    chosen = [rng.permutation(np.flatnonzero(inverse == k))[: take[k]] for k in range(len(classes))]
    picked = np.sort(np.concatenate(chosen))
    return picked, np.setdiff1d(np.arange(len(targets)), picked)


def split_train_val_test(
    targets: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices (SRC-MT's 7:1:2 by default). targets: (N,) class indices."""
    n = len(targets)
    train, rest = stratified_take(targets, int(round(fractions[0] * n)), seed)
    n_val = int(round(fractions[1] * n))
    val_pos, test_pos = stratified_take(targets[rest], n_val, seed + 1)
    return train, rest[val_pos], rest[test_pos]


def draw_labeled(targets: np.ndarray, labeled: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified labeled/unlabeled positions into `targets`.

    Args:
        targets: (N,) class indices of the training split.
        labeled: a fraction in (0, 1] (1.0: every image labeled), or a count > 1.
    """
    n = len(targets)
    count = int(round(labeled * n)) if labeled <= 1 else int(labeled)
    return stratified_take(targets, min(count, n), seed)


def write_split_csv(path: str | Path, images: list[str], targets: np.ndarray, classes: tuple[str, ...]) -> None:
    """Write SRC-MT's one-hot format `image,MEL,NV,...` (CRLF line ends, as the published files)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)  # csv's default line terminator is CRLF
        writer.writerow(["image", *classes])
        for image, t in zip(images, targets, strict=True):
            writer.writerow([image, *(f"{float(j == t):.1f}" for j in range(len(classes)))])
