"""ONNX export: ONNX Runtime agrees with PyTorch, predict takes the .onnx file, a model card goes beside it."""

import numpy as np
import pytest
from PIL import Image

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.export import onnx_metadata, onnx_probabilities
from clcpmt.inference import predict_probs
from clcpmt.runner import train
from clcpmt.system import load_system
from test_train import tiny

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config(None, tiny(tmp, "run", **{"train.epochs": 1, "train.steps_per_epoch": 3}))
    return train(cfg)


def test_onnx_agrees_with_pytorch_and_predict_takes_it(finished_run, tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", str(finished_run), "--out", str(out)]) == 0
    meta = onnx_metadata(out)
    assert meta["task"] == "single" and meta["input_size"] == "32" and meta["model"] == "teacher"
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "Not for diagnosis" in card and "m.onnx" in card and "| testing |" in card
    module, _ = load_system(finished_run / "checkpoints" / "best.ckpt")
    g = np.random.default_rng(0)
    for n in (1, 7, 33):  # a dynamic batch, real-size inputs
        images = g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        ours = predict_probs(module, images, np.arange(n))["teacher"].numpy()
        assert np.abs(onnx_probabilities(out, images) - ours).max() <= 1e-4
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(g.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    assert main(["predict", str(finished_run), "--images", str(folder), "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["predict", str(out), "--images", str(folder), "--out", str(tmp_path / "b.csv")]) == 0
    a, b = (np.loadtxt(tmp_path / f, delimiter=",", skiprows=1, usecols=range(1, 8)) for f in ("a.csv", "b.csv"))
    assert np.abs(a - b).max() <= 1e-4
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == (tmp_path / "b.csv").read_text().splitlines()[0]


def test_every_finished_run_has_a_model_card(finished_run):
    card = (finished_run / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: clcp_mt on synthetic") and "Labeled images per class" in card
    assert "Lowest testing recall" in card


def test_a_file_that_is_not_an_export_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_text("nope")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    assert main(["predict", str(bad), "--images", str(folder), "--out", str(tmp_path / "p.csv")]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err
