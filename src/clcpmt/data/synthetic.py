"""SYNTHETIC lesion-like images: the embedded demo data and the shared test fixture (no download needed).

Seven classes in HAM10000's proportions (58:1 head to tail). A class sets the blob's colour, elongation, border
irregularity and stripe texture; per-image jitter makes classes overlap so the task is learnable, not trivial.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import ISIC_CLASSES

HAM_COUNTS = np.array([1113, 6705, 514, 327, 1099, 115, 142])  # MEL NV BCC AKIEC BKL DF VASC
_COLOUR = np.array(  # lesion RGB in [0, 1]
    [
        [0.25, 0.15, 0.12],
        [0.55, 0.35, 0.25],
        [0.75, 0.50, 0.55],
        [0.70, 0.35, 0.30],
        [0.60, 0.50, 0.35],
        [0.50, 0.40, 0.45],
        [0.65, 0.15, 0.30],
    ]
)
_ELONGATION = np.array([1.3, 1.0, 1.1, 1.6, 1.4, 1.0, 1.2])
_IRREGULAR = np.array([0.30, 0.05, 0.15, 0.25, 0.10, 0.05, 0.10])
_STRIPES = np.array([3.0, 1.0, 6.0, 2.0, 8.0, 4.0, 5.0])  # texture frequency, cycles per image
_SKIN = np.array([0.87, 0.70, 0.60])


def class_counts(n: int, counts: np.ndarray = HAM_COUNTS, minimum: int = 2) -> np.ndarray:
    """Split `n` images over classes in the given proportions (largest remainder), at least `minimum` each."""
    share = counts / counts.sum() * n
    out = np.maximum(np.floor(share).astype(int), minimum)
    while out.sum() < n:
        out[np.argmax(share - out)] += 1
    while out.sum() > n:
        out[np.argmax(out)] -= 1
    return out


def _one_image(rng: np.random.Generator, c: int, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    yy, xx = grid
    cx, cy = rng.normal(0.0, 0.07, 2)
    angle = rng.uniform(0, np.pi)
    x = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    y = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    radius = rng.uniform(0.17, 0.30)
    elong = _ELONGATION[c] * rng.uniform(0.85, 1.15)
    d = np.sqrt((x / radius) ** 2 + (y * elong / radius) ** 2)
    d = d * (1 + _IRREGULAR[c] * rng.uniform(0.5, 1.5) * np.sin(rng.integers(3, 8) * np.arctan2(y, x)))
    mask = 1 / (1 + np.exp(-(1 - d) * 12))  # (H, W) soft blob
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * _STRIPES[c] * rng.uniform(0.8, 1.2) * x + rng.uniform(0, 6.3))
    colour = np.clip(_COLOUR[c] + rng.normal(0, 0.07, 3), 0, 1)
    lesion = colour[None, None] * (1 - 0.35 * stripes[..., None])  # (H, W, 3)
    skin = np.clip(_SKIN + rng.normal(0, 0.05, 3), 0, 1)[None, None]
    img = skin * (1 - mask[..., None]) + lesion * mask[..., None] + rng.normal(0, 0.04, (*mask.shape, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_synthetic(n: int = 2000, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate the synthetic dataset deterministically.

    Returns:
        images: (N, size, size, 3) uint8; labels: (N,) int64 class indices in ISIC order.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(HAM_COUNTS)), class_counts(n))
    rng.shuffle(labels)
    axis = (np.arange(size) + 0.5) / size - 0.5
    grid = np.meshgrid(axis, axis, indexing="ij")
    images = np.stack([_one_image(rng, int(c), grid) for c in labels])
    return images, labels.astype(np.int64)


def write_image_folder(root: str | Path, images: np.ndarray, labels: np.ndarray, fmt: str = "jpg") -> Path:
    """Write images as `ISIC_XXXXXXX.<fmt>` plus an ISIC one-hot ground-truth CSV; returns the CSV path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *ISIC_CLASSES])
        for i, (img, c) in enumerate(zip(images, labels, strict=True)):
            name = f"ISIC_{9000000 + i:07d}"
            Image.fromarray(img).save(root / "images" / f"{name}.{fmt}")
            writer.writerow([name, *(f"{float(j == c):.1f}" for j in range(len(ISIC_CLASSES)))])
    return csv_path


FINDINGS = ("blob", "band", "ring", "spot", "stripes")
FINDING_PREVALENCE = np.array([0.30, 0.22, 0.15, 0.06, 0.03])  # the last two are rare


def _draw_finding(
    img: np.ndarray, k: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, contrast: float = 1.0
) -> None:
    """Add finding k to a (H, W) grayscale image in place; each finding has its own shape and place."""
    strength = contrast * rng.uniform(0.15, 0.3)
    if k == 0:  # bright blob in the upper left
        cy, cx = rng.uniform(-0.3, -0.1, 2)
        img += strength * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01)
    elif k == 1:  # horizontal band low in the image
        img += strength * np.exp(-((yy - rng.uniform(0.15, 0.3)) ** 2) / 0.003)
    elif k == 2:  # ring around the centre
        r = np.sqrt(yy**2 + xx**2)
        img += strength * np.exp(-((r - rng.uniform(0.15, 0.25)) ** 2) / 0.002)
    elif k == 3:  # dark spot on the right
        cy, cx = rng.uniform(-0.1, 0.1), rng.uniform(0.2, 0.35)
        img -= strength * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.004)
    else:  # diagonal stripes
        img += 0.5 * strength * np.sin(2 * np.pi * 6 * (xx + yy) + rng.uniform(0, 6.3))


def make_synthetic_multilabel(
    n: int = 2000, size: int = 32, seed: int = 0, contrast: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC grayscale "X-rays" with 5 findings of different prevalence (some images have none).

    contrast scales every finding's strength against the same noise: below 1 the findings are subtler (harder).

    Returns:
        images: (N, size, size, 3) uint8 (gray repeated); labels: (N, 5) float32 0/1.
    """
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(FINDINGS))) < FINDING_PREVALENCE).astype(np.float32)
    axis = (np.arange(size) + 0.5) / size - 0.5
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        img = 0.45 - 0.4 * (xx**2 + yy**2) + rng.normal(0, 0.06, (size, size))  # a vignetted noisy field
        for k in np.flatnonzero(labels[i]):
            _draw_finding(img, int(k), rng, yy, xx, contrast)
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)[..., None]
    return images, labels
