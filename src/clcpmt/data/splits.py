"""Splits (SPEC §5): 7:1:2 train/val/test and a labeled subset, stratified by class with a seed; SRC-MT CSV files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SPLIT_FILES = {"training": "training.csv", "validation": "validation.csv", "testing": "testing.csv"}


def split_train_val_test(
    targets: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test indices. targets: (N,) class indices."""
    idx = np.arange(len(targets))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=targets, random_state=seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = train_test_split(rest, train_size=val_share, stratify=targets[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def draw_labeled(targets: np.ndarray, labeled: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified labeled/unlabeled positions into `targets`.

    Args:
        targets: (N,) class indices of the training split.
        labeled: a fraction in (0, 1), or a count >= 1; 1.0 means every image is labeled.
    """
    n = len(targets)
    count = int(round(labeled * n)) if labeled < 1 else int(labeled)
    if count >= n:
        return np.arange(n), np.arange(0)
    idx = np.arange(n)
    lab, unl = train_test_split(idx, train_size=count, stratify=targets, random_state=seed)
    return np.sort(lab), np.sort(unl)


def write_split_csv(path: str | Path, images: list[str], targets: np.ndarray, classes: tuple[str, ...]) -> None:
    """Write SRC-MT's one-hot format `image,MEL,NV,...` (CRLF line ends, as the published files)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)  # csv's default line terminator is CRLF
        writer.writerow(["image", *classes])
        for image, t in zip(images, targets, strict=True):
            writer.writerow([image, *(f"{float(j == t):.1f}" for j in range(len(classes)))])
