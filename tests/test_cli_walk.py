"""Every option of predict, evaluate, export, report and bench fed hostile values: each is accepted by design or
answered with exactly one `error:` line naming the option (or the path given), exit status 2, no traceback."""

import csv
from pathlib import Path

import pytest
from PIL import Image

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.runner import train
from test_config_walk import HOSTILE
from test_train import tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny run, two images with a label CSV, and a grid file whose one run is that run."""
    tmp = tmp_path_factory.mktemp("walk")
    run = train(load_config(None, tiny(tmp, "run", **{"train.epochs": 1, "train.steps_per_epoch": 2})))
    images = tmp / "images"
    images.mkdir()
    for name, colour in (("ISIC_0000001", (200, 120, 90)), ("ISIC_0000002", (90, 60, 40))):
        Image.new("RGB", (40, 30), colour).save(images / f"{name}.jpg")
    labels = tmp / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"])
        writer.writerow(["ISIC_0000001", 1, 0, 0, 0, 0, 0, 0])
        writer.writerow(["ISIC_0000002", 0, 1, 0, 0, 0, 0, 0])
    grid = tmp / "grid.yaml"
    grid.write_text(f"out: {tmp / 'bench'}\nmethods: [clcp_mt]\nlabeled: [0.2]\nseeds: [0]\n")
    return {"run": str(run), "images": str(images), "labels": str(labels), "grid": str(grid), "tmp": tmp}


def commands(w):
    """Each command's valid call: (name, positional arguments, {option: valid value})."""
    return [
        ("predict", [w["run"]], {"--images": w["images"], "--out": "p.csv", "--checkpoint": "best",
                                 "--model": "teacher", "--overwrite": None}),
        ("evaluate", [w["run"]], {"--checkpoint": "best", "--split": "validation", "--labels": w["labels"],
                                  "--images": w["images"], "--out": "e.json"}),
        ("export", [w["run"]], {"--out": "m.onnx", "--checkpoint": "best", "--model": "teacher", "--overwrite": None}),
        ("report", [w["run"]], {"--out": "r.html", "--baseline": ""}),
        ("bench", [w["grid"]], {"--report": None, "--jobs": "1"}),
    ]  # fmt: skip


def argv(name, positional, options, replace=None, value=None):
    out = [name, *positional]
    for option, v in options.items():
        v = value if option == replace else v
        out += [option] if v is None else [option, v]
    return out


def call(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors (a bad choice, not an integer)
        code = e.code
    return code, capsys.readouterr().err


CASES = [(name, slot) for name, positional, options in commands(dict.fromkeys(("run", "images", "labels", "grid"), "x"))
         for slot in ["<positional>", *(o for o, v in options.items() if v is not None)]]  # fmt: skip


def test_the_walk_covers_every_option_that_takes_a_value():
    assert len(CASES) == 20 and len(CASES) * len(HOSTILE) == 180


@pytest.mark.parametrize("name, slot", CASES)
def test_each_hostile_value_is_accepted_or_one_error_naming_the_option(name, slot, world, tmp_path, capsys,
                                                                      monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # outputs accepted under odd names land here
    _, positional, options = next(c for c in commands(world) if c[0] == name)
    assert call(argv(name, positional, options), capsys)[0] == 0, f"the valid {name} call failed"
    for value in HOSTILE:
        if slot == "<positional>":
            args = argv(name, [value], options)
        else:
            args = argv(name, positional, options, slot, value)
        code, err = call(args, capsys)
        assert code in (0, 2), (args, code, err)
        assert "Traceback" not in err, (args, err)
        if code == 2:
            lines = [line for line in err.splitlines() if "error:" in line]
            named = slot if slot != "<positional>" else value
            assert len(lines) == 1 and (named in lines[0] or value and value in lines[0]), (args, err)


def test_predict_takes_one_image_and_refuses_a_binary_that_is_no_image(world, tmp_path, capsys):
    one = sorted(Path(world["images"]).glob("*.jpg"))[0]
    assert main(["predict", world["run"], "--images", str(one), "--out", str(tmp_path / "one.csv")]) == 0
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 2  # header + the image
    blob = tmp_path / "weights.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    assert main(["predict", world["run"], "--images", str(blob), "--out", str(tmp_path / "b.csv")]) == 2
    assert "is neither an image" in capsys.readouterr().err


def test_a_device_request_the_machine_cannot_meet_is_one_error_and_leaves_no_folder(tmp_path, capsys):
    run = tmp_path / "dev"
    over = tiny(tmp_path, "dev", **{"train.epochs": 1, "train.steps_per_epoch": 1, "train.accelerator": "cpu",
                                    "train.devices": "0,1"})  # fmt: skip
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "train.devices=0,1" in err and err.count("error:") == 1 and "Traceback" not in err
    assert not run.exists()
