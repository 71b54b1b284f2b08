"""Batched views: each op against torchvision's own on one image, per-image parameters, seeding."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from clcpmt.data.datamodule import SSLViews
from clcpmt.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAND_AUGMENT,
    BatchViews,
    affine_matrices,
    color_jitter,
    gaussian_blur,
    rand_augment,
    warp,
)


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def theta(m: list[list[float]], offset: list[float]) -> torch.Tensor:
    return torch.tensor([[m[0] + [offset[0]], m[1] + [offset[1]]]])


def test_warp_identity_flip_rotation_and_crop_match_exact_references():
    x = images(1)
    assert torch.allclose(warp(x, theta([[1, 0], [0, 1]], [0, 0])), x, atol=1e-6)
    assert torch.allclose(warp(x, theta([[-1, 0], [0, 1]], [0, 0])), x.flip(-1), atol=1e-6)  # horizontal flip
    assert torch.allclose(warp(x, theta([[0, -1], [1, 0]], [0, 0])), TF.rotate(x, 90), atol=1e-5)
    # a pixel-aligned crop of 8x8 at (top 2, left 4) resized to 16x16: torchvision's resized_crop (no antialias)
    side, top, left, crop = 16, 2, 4, 8
    w = crop / side
    c = [(2 * left + crop) / side - 1, (2 * top + crop) / side - 1]
    ours = warp(x, theta([[w, 0], [0, w]], c))
    ref = TF.resized_crop(x, top, left, crop, crop, [side, side], antialias=False)
    assert torch.allclose(ours[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)  # edges: zero fill vs clamp


def test_affine_matrices_stay_in_their_ranges_and_differ_per_image():
    m = affine_matrices(2000, torch.Generator().manual_seed(0))
    lin = m[:, :, :2]
    det = lin.det().abs()  # = crop area fraction w·h (flips and rotation keep |det|)
    assert det.min() >= 0.8 * 0.999 and det.max() <= 1.0 + 1e-6
    side_x = lin[:, 0].norm(dim=1)  # crop width fraction, whatever the rotation
    ratio = side_x / lin[:, 1].norm(dim=1)
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    angle = torch.atan2(lin[:, 0, 1] * lin[:, 0, 0].sign(), lin[:, 0, 0].abs())  # R(-θ) row 0 = (cos, sin)·w·fx
    assert angle.abs().max() <= math.radians(10) + 1e-4 and angle.abs().max() > math.radians(9)
    assert (lin[:, 0, 0] < 0).float().mean() == pytest.approx(0.5, abs=0.05)  # half flipped horizontally
    assert len(torch.unique(m[:, 0, 2])) == 2000  # every image its own crop


def test_color_jitter_matches_torchvision_per_image():
    x = images(3)
    factors = torch.tensor([[0.7, 1.2, 0.9], [1.3, 0.8, 1.1], [1.0, 1.0, 0.75]])
    out = color_jitter(x, factors, [2, 0, 1])
    for i in range(3):
        ref = TF.adjust_saturation(x[i], factors[i, 2].item())
        ref = TF.adjust_brightness(ref, factors[i, 0].item())
        ref = TF.adjust_contrast(ref, factors[i, 1].item())
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_gaussian_blur_matches_torchvision_per_image():
    x = images(3)
    sigma = torch.tensor([0.1, 0.7, 1.5])
    out = gaussian_blur(x, sigma)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [3, 3], [sigma[i].item(), sigma[i].item()])
        assert torch.allclose(out[i], ref, atol=1e-5), i


def test_rand_augment_applies_torchvision_op_of_each_image():
    x = images(6)
    names = list(RAND_AUGMENT._AUGMENTATION_SPACE)
    ops = torch.tensor([names.index(n) for n in ("Rotate", "Rotate", "Posterize", "Equalize", "Identity", "ShearX")])
    negative = torch.tensor([False, True, False, False, False, True])
    out = rand_augment(x, ops, negative)
    refs = [TF.rotate(x[0], 7.0), TF.rotate(x[1], -7.0), TF.posterize(TF.to_dtype(x[2], torch.uint8, scale=True), 7),
            TF.equalize(x[3]), x[4], None]  # fmt: skip
    assert torch.allclose(out[0], refs[0], atol=1e-6) and torch.allclose(out[1], refs[1], atol=1e-6)
    assert torch.allclose(out[2], TF.to_dtype(refs[2], torch.float32, scale=True), atol=1 / 255 + 1e-6)
    assert torch.allclose(out[3], refs[3], atol=1e-6) and torch.equal(out[4], x[4])
    shear = math.degrees(math.atan(-0.07))  # ShearX at magnitude 7 of 31, negated
    assert torch.allclose(out[5], TF.affine(x[5], 0.0, [0, 0], 1.0, [shear, 0.0], center=[0, 0]), atol=1e-6)


def test_views_are_per_image_reproducible_and_normalised():
    base = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    batch = base.repeat(8, 1, 1, 1)  # eight copies of one image
    views = BatchViews(IMAGENET_MEAN, IMAGENET_STD)
    for make in (views.weak, views.strong):
        a = make(batch, torch.Generator().manual_seed(5))
        b = make(batch, torch.Generator().manual_seed(5))
        assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32 and torch.equal(a, b)  # same seed, same views
        assert all(not torch.allclose(a[0], a[i]) for i in range(1, 8))  # each copy its own parameters


def test_ssl_views_shapes_and_one_labeled_view():
    labeled = (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), torch.tensor([7, 8, 9, 10]))
    unlabeled = (torch.zeros(6, 3, 8, 8, dtype=torch.uint8), torch.full((6,), -1), torch.arange(6), torch.arange(6))
    two = SSLViews(2, True, mean=IMAGENET_MEAN, std=IMAGENET_STD)({"labeled": labeled, "unlabeled": unlabeled})
    assert len(two["labeled"]) == 3 and two["labeled"][0].shape == (4, 3, 8, 8)
    assert [t.shape[0] for t in two["unlabeled"]] == [6, 6, 6, 6]
    one = SSLViews(1, False, mean=IMAGENET_MEAN, std=IMAGENET_STD)({"labeled": labeled})
    assert len(one["labeled"]) == 2 and torch.equal(one["labeled"][1], torch.arange(4))
    assert np.isclose(one["labeled"][0].mean().item(), (0 - 0.449) / 0.226, atol=0.2)  # black, normalised (zero fill)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the views made on it")
def test_views_on_the_gpu_equal_the_cpu_views():
    batch = (torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    views = BatchViews(IMAGENET_MEAN, IMAGENET_STD)
    for make in (views.weak, views.strong):
        cpu = make(batch, torch.Generator().manual_seed(3))
        gpu = make(batch.cuda(), torch.Generator().manual_seed(3))
        assert gpu.device.type == "cuda" and (gpu.cpu() - cpu).abs().mean() < 1e-3


def test_labeled_and_unlabeled_streams_draw_apart_even_from_equal_seeds():
    image = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    seeds = torch.tensor([123])
    views = SSLViews(1, False, mean=IMAGENET_MEAN, std=IMAGENET_STD)({"labeled": (image, torch.tensor([0]), seeds),
                                       "unlabeled": (image, torch.tensor([-1]), torch.tensor([0]), seeds)})  # fmt: skip
    assert not torch.allclose(views["labeled"][0], views["unlabeled"][0])
