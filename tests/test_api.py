"""The Python API: train with dotted or per-section overrides, load a run / checkpoint / ONNX file, predict from
paths, PIL images or arrays with the run's own preprocessing, evaluate a labeled set. Only public names are used."""

import csv

import numpy as np
import pytest
from PIL import Image

import clcpmt
from clcpmt import ConfigError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    return clcpmt.train(
        run_dir=tmp / "run",
        data={"synthetic_size": 500, "image_size": 32, "num_workers": 0},
        train={"epochs": 1, "steps_per_epoch": 2, "progress_bar": False},
        **{"model.backbone": "resnet10t", "method.warmup_epochs": 1, "method.rampup_epochs": 1},
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"ISIC_000000{i}.png")
    return folder


def test_train_returns_the_run_with_its_config_and_metrics(run):
    assert run.config.train.epochs == 1 and run.config.data.image_size == 32  # both override forms arrived
    assert run.config.model.backbone == "resnet10t"
    assert (run.run_dir / "metrics.json").is_file() and "testing/teacher" in run.metrics


def test_an_unknown_override_is_the_config_error_of_the_command_line(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch"):
        clcpmt.train(run_dir=tmp_path / "r", **{"train.epoch": 1})
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="no config.yaml there; is it a run folder"):
        clcpmt.train(run_dir=tmp_path, resume=True)


def test_run_config_resolves_as_training_does(run, tmp_path):
    """The config `clcpmt.train` and `clcpmt train` train with; a resumed run reads its own config.yaml, with the
    folder it is in now (tests/test_config.py checks the command line prints the same)."""
    import shutil

    cfg = clcpmt.run_config("demo", tmp_path / "r", overrides=["--train.epochs=3"])
    assert cfg.train.epochs == 3 and cfg.run_dir == str(tmp_path / "r") and cfg.data.dataset == "synthetic"
    assert clcpmt.run_config(run_dir="runs/try #007/").run_dir == "runs/try #007"  # a path, not a YAML value
    moved = tmp_path / "moved"
    shutil.copytree(run.run_dir, moved)
    resumed = clcpmt.run_config(run_dir=moved, resume=True)
    assert resumed.run_dir == str(moved) and resumed.train.epochs == 1 and resumed.data.image_size == 32


def test_predict_from_paths_pil_and_arrays_agree_with_the_cli(run, photos, tmp_path):
    model = clcpmt.load(run.run_dir)
    paths = sorted(photos.glob("*.png"))
    from_folder = model.predict(photos)
    assert from_folder.shape == (3, len(model.classes)) and np.allclose(from_folder.sum(1), 1, atol=1e-5)
    pil = [Image.open(p) for p in paths]
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in pil])
    assert np.allclose(model.predict(paths), from_folder, atol=1e-6)
    assert np.allclose(model.predict(pil), from_folder, atol=1e-6)
    assert np.allclose(model.predict(arrays), from_folder, atol=1e-6)  # a batch (N, H, W, 3)
    assert np.allclose(model.predict(arrays[0]), from_folder[:1], atol=1e-6)  # one (H, W, 3)
    from clcpmt.cli import main

    assert main(["predict", str(run.run_dir), "--images", str(photos), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == list(model.classes)
    assert np.allclose(np.array([[float(v) for v in r[1:]] for r in rows[1:]]), from_folder, atol=1e-5)


def test_predict_refuses_what_is_not_an_image(run):
    model = run.load()
    with pytest.raises(ValueError, match=r"image 0: expected a uint8 \(H, W, 3\) RGB array; got float64"):
        model.predict(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="image 1: expected a path, a PIL image or a uint8 array; got int"):
        model.predict([np.zeros((10, 10, 3), np.uint8), 5])


def test_evaluate_a_labeled_set_and_the_onnx_predictor(run, photos, tmp_path):
    labels = tmp_path / "labels.csv"
    rows = [["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]]
    rows += [[p.stem, *(int(j == i) for j in range(7))] for i, p in enumerate(sorted(photos.glob("*.png")))]
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    result = clcpmt.load(run.run_dir).evaluate(labels, photos)
    assert {"external/teacher", "external/student"} <= set(result)
    assert 0 <= result["external/teacher"]["standard/bacc"] <= 100
    from clcpmt.cli import main

    assert main(["export", str(run.run_dir), "--out", str(tmp_path / "m.onnx")]) == 0
    onnx = clcpmt.load(tmp_path / "m.onnx")
    assert np.allclose(onnx.predict(photos), clcpmt.load(run.run_dir).predict(photos), atol=1e-4)
    assert np.allclose(onnx.predict(photos), onnx.predict(photos))  # its one session, reused
    with pytest.raises(ConfigError, match="holds the teacher only; got model='student'"):
        clcpmt.load(tmp_path / "m.onnx", model="student")


def test_a_16_bit_pil_image_is_scaled_as_the_same_file_read_from_disk(run, tmp_path):
    rng = np.random.default_rng(1)
    xray = Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16))
    xray.save(tmp_path / "xray.png")
    model = run.load()
    with Image.open(tmp_path / "xray.png") as opened:
        assert opened.mode.startswith("I")  # PIL opens it as 16-bit: the case the shared reader scales
        assert np.allclose(model.predict(opened), model.predict(tmp_path / "xray.png"), atol=1e-6)


def test_create_student_is_the_factory():
    student, source = clcpmt.create_student("resnet10t", num_classes=7)
    assert source and student is not None


def test_the_errors_import_without_torch():
    """`except clcpmt.ConfigError` in a script must not pay for importing torch and the API."""
    import subprocess
    import sys

    code = "import sys, clcpmt; clcpmt.ConfigError, clcpmt.DataError; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
    assert issubclass(clcpmt.ConfigError, ValueError) and issubclass(clcpmt.DataError, ValueError)
