"""Weak and strong views (method.md §3) of a whole batch at once, each image with its own random parameters.

torchvision.transforms.v2 draws one set of random parameters per call, so a batch sent through one call would share
them, and one call per image costs about 1 ms a weak view and 3 ms a strong one at 64 px (per-call overhead): on a
2-core machine that data path took a fifth of every training step. So the parameters are drawn here, per image, and
applied in a few batched tensor ops on the batch's device (the GPU when training there):
- geometric, weak and strong views: RandomResizedCrop (scale 0.8-1, ratio 3/4-4/3) + horizontal and vertical
  flips + affine (±10°, 5 % translation), composed into one 2x3 matrix per image and sampled once (bilinear, zero
  fill) - the one resampling that the three torchvision ops would do in turn;
- strong views add colour jitter (brightness, contrast, saturation, each a factor in [0.7, 1.3], torchvision's
  formulas; no hue: costly, and lesion hue is diagnostic; the order of the three drawn per batch), Gaussian blur
  (3x3, σ in [0.1, 1.5], p = 0.5) and RandAugment (2 ops at magnitude 7 of 31): each image draws its ops and signs,
  and the images that drew the same op are transformed together by torchvision's own implementation of it.
Images are float in [0, 1] until the normalisation at the end, with the statistics of the backbone's weights
(`model.normalization`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # random-init runs (and most timm weights); pretrained ones use their own
IMAGENET_STD = (0.229, 0.224, 0.225)
Stats = tuple[float, ...]
GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights
RAND_AUGMENT = v2.RandAugment(num_ops=2, magnitude=7)  # torchvision's op table, magnitudes and fill


def normalize(mean: Stats, std: Stats) -> v2.Compose:
    """uint8 -> float in [0, 1] -> (x - mean) / std, the statistics the backbone's weights expect; one image or a
    batch."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def affine_matrices(
    n: int,
    g: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    degrees: float = 10.0,
    translate: float = 0.05,
) -> torch.Tensor:
    """(n, 2, 3) sampling matrices (output -> input, normalised coordinates) of crop, flips and affine, per image.

    With u an output position: input = c + S·F·R(-θ)·(u - t), for the crop's centre c and half-size S (area in
    `scale`, aspect in `ratio`, kept inside the image), flips F = diag(±1, ±1), rotation θ in ±`degrees` and
    translation t in ±`translate` of the side. Square images (the cache is square).

    Args:
        n: number of images; g: the generator every parameter is drawn from.
    """
    area = _uniform(n, *scale, g)
    # the aspect ratio is drawn log-uniformly among those whose crop fits inside the image (torchvision redraws both)
    low, high = area.log().clamp(min=math.log(ratio[0])), (-area.log()).clamp(max=math.log(ratio[1]))
    log_r = low + (high - low) * torch.rand(n, generator=g)
    w, h = (area * log_r.exp()).sqrt(), (area / log_r.exp()).sqrt()  # side fractions, each <= 1
    cx, cy = (1 - w) * _uniform(n, -1, 1, g), (1 - h) * _uniform(n, -1, 1, g)
    flip_x = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -degrees, degrees, g))
    t = torch.stack([_uniform(n, -2 * translate, 2 * translate, g), _uniform(n, -2 * translate, 2 * translate, g)], 1)
    cos, sin = angle.cos(), angle.sin()
    rotate_back = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)  # (n, 2, 2) R(-θ)
    m = torch.stack([w * flip_x, h * flip_y], 1)[:, :, None] * rotate_back  # S·F·R(-θ)
    offset = torch.stack([cx, cy], 1) - (m @ t[:, :, None])[:, :, 0]  # c - M·t
    return torch.cat([m, offset[:, :, None]], dim=2)


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (n, 3, H, W) float images through (n, 2, 3) matrices (bilinear, zero outside the image)."""
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(dim=1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b)[:, None]  # (n, 1, H, W)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.to(images)[:, None, None, None]
    return (f * images + (1 - f) * other).clamp(0.0, 1.0)


def color_jitter(images: torch.Tensor, factors: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Brightness, contrast and saturation (torchvision's definitions) with per-image factors (n, 3), in `order`."""
    for k in order:
        if k == 0:
            images = _blend(images, torch.zeros_like(images), factors[:, 0])
        elif k == 1:
            images = _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), factors[:, 1])
        else:
            images = _blend(images, _gray(images), factors[:, 2])
    return images


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """3x3 Gaussian blur with a σ per image (n,), reflect padding, as torchvision's gaussian_blur.

    Separable: three shifted copies weighted along the rows, then along the columns.
    """
    x = torch.tensor([-1.0, 0.0, 1.0])
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(images)[:, :, None, None, None]  # (n, 3, 1, 1, 1)
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")  # (n, c, H + 2, W + 2)
    rows = sum(k[:, j] * padded[..., :, j : j + w] for j in range(3))  # (n, c, H + 2, W)
    return sum(k[:, i] * rows[..., i : i + h, :] for i in range(3))


def rand_augment(images: torch.Tensor, ops: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """One RandAugment round: image i gets torchvision's op number ops[i] (of its 14) at magnitude 7 of 31, negated
    where negative[i] for the signed ops. Images that drew the same op and sign are transformed together."""
    table = list(RAND_AUGMENT._AUGMENTATION_SPACE.items())
    height, width = images.shape[-2:]
    out = images.clone()
    for op in ops.unique().tolist():
        name, (magnitudes, signed) = table[op]
        magnitude = 0.0 if magnitudes(31, height, width) is None else float(magnitudes(31, height, width)[7])
        for neg in (False, True) if signed else (False,):
            chosen = (ops == op) & (negative == neg) if signed else ops == op
            rows = chosen.nonzero()[:, 0].to(images.device)
            if len(rows):
                out[rows] = RAND_AUGMENT._apply_image_or_video_transform(  # torchvision's op on the group
                    images[rows], name, -magnitude if neg else magnitude, RAND_AUGMENT.interpolation, RAND_AUGMENT._fill
                )
    return out


class BatchViews:
    """Weak and strong views of (n, 3, S, S) uint8 batches, normalised with (mean, std) per channel; every random
    parameter comes from the generator given."""

    def __init__(self, mean: Stats, std: Stats) -> None:
        self.mean = torch.tensor(mean)[None, :, None, None]
        self.std = torch.tensor(std)[None, :, None, None]

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images)) / self.std.to(images)

    def weak(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Random resized crop (0.8-1), flips and a small affine; normalised float (n, 3, S, S)."""
        x = images.float() / 255.0
        return self._normalize(warp(x, affine_matrices(len(x), g)))

    def strong(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The weak view's geometry + colour jitter, blur (p = 0.5) and RandAugment (two ops at magnitude 7)."""
        n = len(images)
        x = warp(images.float() / 255.0, affine_matrices(n, g))
        order = torch.randperm(3, generator=g).tolist()
        x = color_jitter(x, _uniform(3 * n, 0.7, 1.3, g).reshape(n, 3), order)
        sigma, blurred = _uniform(n, 0.1, 1.5, g), (torch.rand(n, generator=g) < 0.5).nonzero()[:, 0]
        x[blurred.to(x.device)] = gaussian_blur(x[blurred.to(x.device)], sigma[blurred])
        for _ in range(2):
            ops = torch.randint(len(RAND_AUGMENT._AUGMENTATION_SPACE), (n,), generator=g)
            x = rand_augment(x, ops, torch.rand(n, generator=g) <= 0.5)
        return self._normalize(x)
