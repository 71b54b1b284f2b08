"""Weak and strong views (SPEC §3) on uint8 (3, H, W) tensors, with torchvision.transforms.v2."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize() -> v2.Compose:
    """uint8 -> float in [0, 1] -> ImageNet mean/std (what timm backbones expect)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _geometric(size: int) -> list[v2.Transform]:
    return [
        v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),  # lesions have no canonical orientation
        v2.RandomAffine(degrees=10, translate=(0.05, 0.05)),
    ]


def weak_transform(size: int) -> v2.Compose:
    """Random resized crop (scale 0.8-1), flips and a small affine."""
    return v2.Compose([*_geometric(size), normalize()])


def strong_transform(size: int) -> v2.Compose:
    """Weak view + colour jitter, blur and RandAugment (two ops at moderate magnitude)."""
    return v2.Compose(
        [
            *_geometric(size),
            v2.ColorJitter(
                brightness=0.3, contrast=0.3, saturation=0.3
            ),  # no hue: costly, and lesion hue is diagnostic
            v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.5))], p=0.5),
            v2.RandAugment(num_ops=2, magnitude=7),
            normalize(),
        ]
    )
