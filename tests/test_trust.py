"""A file someone sent never runs code here: every command that reads a checkpoint or weights file uses torch's
safe unpickler, and clcpmt's own checkpoints (also those of earlier releases) load that way."""

import os
import shutil

import pytest
import torch

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.runner import train
from clcpmt.system import read_checkpoint
from test_train import tiny


class Payload:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    return train(load_config(None, tiny(tmp, "run", **{"train.epochs": 1, "train.steps_per_epoch": 2})))


def evil_copy(run_dir, tmp_path, marker):
    """A copy of a real run folder whose checkpoints carry the payload beside their real content."""
    evil = tmp_path / "evil_run"
    shutil.copytree(run_dir, evil)
    for name in ("best.ckpt", "last.ckpt"):
        path = evil / "checkpoints" / name
        if path.is_file():
            ckpt = torch.load(path, weights_only=True)
            ckpt["hyper_parameters"]["note"] = Payload(marker)
            torch.save(ckpt, path)
    (evil / "metrics.json").unlink()  # so that `train --resume` has something left to do
    return evil


def test_our_checkpoints_load_with_the_safe_unpickler(finished):
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(finished / "checkpoints" / name, weights_only=True)  # raises if anything else is in it
        assert ckpt["hyper_parameters"]["config"]["method"]["name"] == "clcp_mt"


def test_every_command_refuses_a_checkpoint_that_would_run_code(finished, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = evil_copy(finished, tmp_path, marker)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (120, 80, 60)).save(images / "a.png")
    commands = [
        ["predict", str(evil), "--images", str(images), "--out", str(tmp_path / "p.csv")],
        ["predict", str(evil / "checkpoints" / "best.ckpt"), "--images", str(images), "--out", str(tmp_path / "q.csv")],
        ["evaluate", str(evil)],
        ["export", str(evil), "--out", str(tmp_path / "m.onnx")],
        ["train", "--resume", str(evil)],
    ]
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert "holds objects other than tensors and plain values" in err and "never runs code" in err, command
        assert err.count("error:") == 1 and "Traceback" not in err
        assert not marker.exists(), command


def test_a_weights_file_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, path)
    run = tmp_path / "run"
    assert main(["train", *tiny(tmp_path, "run"), f"--model.pretrained={path}", "--model.backbone=resnet18"]) == 2
    err = capsys.readouterr().err
    assert "weights.pth" in err and "holds objects other than tensors" in err
    assert not marker.exists() and not run.exists()


def test_the_safe_reader_names_the_file(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"hyper_parameters": {"config": {}}, "p": Payload(tmp_path / "PWNED")}, path)
    with pytest.raises(ValueError, match=r"x\.ckpt holds objects other than tensors and plain values"):
        read_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
