"""Never lose or mix up a run: resume in the folder given, no deletion the user did not ask for, no stale
checkpoint, checkpoint writes that a kill cannot leave half done."""

import json
import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.runner import AtomicCheckpointIO, clean_partial_checkpoints, train
from clcpmt.system import run_checkpoint
from test_train import Crash, tiny


def test_resume_continues_in_the_folder_given_wherever_it_was_moved_and_whatever_the_cwd(
    tmp_path, monkeypatch, recwarn
):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, tiny(tmp_path, **{"run_dir": "runs/killed"}))  # a relative run_dir, saved as such
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=(Crash(),))
    moved = tmp_path / "elsewhere" / "killed"
    moved.parent.mkdir()
    shutil.move(tmp_path / "runs" / "killed", moved)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert main(["train", "--resume", str(moved)]) == 0
    assert torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 16
    assert (moved / "metrics.json").is_file() and (moved / "logs" / "resume_1" / "metrics.csv").is_file()
    assert not (tmp_path / "other" / "runs").exists() and not (tmp_path / "runs" / "killed").exists()
    # the run's own checkpoints are no surprise: no "Checkpoint directory ... exists and is not empty" from Lightning
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    real = tmp_path / "runs" / "mean_teacher"
    real.mkdir(parents=True)
    (real / "precious.txt").write_text("a real run")
    assert main(["demo", f"--run_dir={tmp_path / 'runs'}"]) == 2
    assert "was not made by `clcpmt demo`" in capsys.readouterr().err
    assert (real / "precious.txt").read_text() == "a real run"


@pytest.mark.parametrize("leftover", ["checkpoints/best.ckpt", "config.yaml", "metrics.json"])
def test_a_folder_holding_a_run_is_refused_without_resume(tmp_path, leftover):
    cfg = load_config(None, tiny(tmp_path, "run"))
    (tmp_path / "run" / leftover).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / leftover).write_text("x")
    with pytest.raises(FileExistsError, match=r"already holds a run .*pass --resume"):
        train(cfg)


def test_evaluate_and_predict_load_the_checkpoint_the_metrics_name(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"checkpoint": "/old/place/run/checkpoints/best-v1.ckpt"}))
    assert run_checkpoint(str(run), "best") == run / "checkpoints" / "best-v1.ckpt"
    assert run_checkpoint(str(run), "last") == run / "checkpoints" / "last.ckpt"
    (run / "metrics.json").unlink()
    assert run_checkpoint(str(run), "best") == run / "checkpoints" / "best.ckpt"


def test_checkpoint_write_killed_midway_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    staged = []
    real_save = torch.save

    def killed(obj: object, f: object) -> None:
        staged.append(f.name)
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill arriving during the write

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert staged and staged[0].startswith(str(path.parent))  # staged beside the target, whatever TMPDIR says
    assert torch.load(path, weights_only=False) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    (path.parent / "best.ckpt.123.partial").write_bytes(b"left by a SIGKILL")
    clean_partial_checkpoints(path.parent)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_resume_after_an_edit_of_data_model_or_method_stops_naming_the_keys(tmp_path):
    cfg = load_config(None, tiny(tmp_path, "killed"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=(Crash(),))
    config = tmp_path / "killed" / "config.yaml"
    splits = (tmp_path / "killed" / "splits" / "testing.csv").read_text()
    config.write_text(config.read_text().replace("seed: 0", "seed: 3", 1))  # data.seed
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 2
    assert main(["train", "--resume", str(tmp_path / "killed"), "--method.tau=0.9"]) == 2
    assert (tmp_path / "killed" / "splits" / "testing.csv").read_text() == splits  # nothing redrawn or rewritten
    config.write_text(config.read_text().replace("seed: 3", "seed: 0", 1))
    assert main(["train", "--resume", str(tmp_path / "killed"), "--data.num_workers=0"]) == 0  # where/how: allowed


def test_a_resumed_run_takes_its_weights_from_the_checkpoint_not_the_starting_file(tmp_path, caplog):
    """The starting weights file may be gone by the time a killed run resumes (another node, a cleaned scratch
    disk): the last checkpoint holds every weight. The model card of an export still names the file it started from."""
    import logging

    import timm

    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    cfg = load_config(None, tiny(tmp_path, "killed", **{"model.pretrained": str(weights)}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=(Crash(),))
    weights.unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clcpmt"):
        assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert f"resumed from {last}" in caplog.text and (tmp_path / "killed" / "logs" / "resume_1").is_dir()
    assert torch.load(last, weights_only=False)["global_step"] == 16  # both epochs: it continued, then finished
    assert f"weights from local file {weights}" not in caplog.text and "random init" not in caplog.text
    out = tmp_path / "export" / "model.onnx"
    assert main(["export", str(tmp_path / "killed"), "--out", str(out)]) == 0
    assert f"weights: `{weights}`" in (out.parent / "MODEL_CARD.md").read_text()


def test_changed_settings_names_keys_and_ignores_where_and_how():
    from clcpmt.config import to_dict
    from clcpmt.runner import changed_settings

    a = to_dict(load_config(None, []))
    b = to_dict(load_config(None, ["--data.seed=2", "--method.tau=0.9", "--data.num_workers=0", "--run_dir=x"]))
    assert changed_settings(a, b) == ["data.seed (0 -> 2)", "method.tau (0.95 -> 0.9)"]


def test_a_truncated_checkpoint_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "best.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    assert main(["predict", str(bad), "--images", str(images), "--out", str(tmp_path / "p.csv")]) == 2
    assert f"{bad} is not a readable checkpoint" in capsys.readouterr().err


def _finished_run(tmp_path):
    cfg = load_config(None, tiny(tmp_path, "done", **{"train.epochs": 1, "train.steps_per_epoch": 2}))
    return train(cfg)


def test_predict_refuses_same_named_images_an_existing_out_and_a_folder_out(tmp_path, capsys, caplog):
    import logging

    import numpy as np
    from PIL import Image

    run = _finished_run(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("X.jpg", "X.png", "Y.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / name)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "--images", str(images), "--out", str(out)]) == 2
    assert "same name would get the same id" in capsys.readouterr().err and not out.exists()
    (images / "X.png").unlink()
    with caplog.at_level(logging.INFO, logger="clcpmt"):
        assert main(["predict", str(run), "--images", str(images), "--out", str(out)]) == 0
    assert "random init" not in caplog.text and "weights from this checkpoint" in caplog.text
    assert main(["predict", str(run), "--images", str(images), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["predict", str(run), "--images", str(images), "--out", str(out), "--overwrite"]) == 0
    assert main(["predict", str(run), "--images", str(images), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["predict", str(run), "--images", str(images), "--out", str(out / "p.csv")]) == 2  # under a file
    assert "--out's folder" in capsys.readouterr().err


def test_16_bit_images_scale_by_the_bit_depth_and_a_header_only_csv_is_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from clcpmt.data.readers import DataError, load_image, read_labels

    arr = np.full((8, 8), 16384, np.uint16)
    arr[0, 0] = 32768  # a brighter pixel: the image's own maximum is 32768, the bit depth's 65535
    Image.fromarray(arr).save(tmp_path / "x.png")
    px = load_image(tmp_path / "x.png", 8, center_crop=False)
    assert px[4, 4, 0] == round(16384 / 65535 * 255)  # 64, not 127 (scaled by the image's maximum)
    header = tmp_path / "labels.csv"
    header.write_text("image,label\n")
    with pytest.raises(DataError, match="labels.csv: no rows after the header"):
        read_labels(header, ("A", "B"))


class Poison(Callback):
    """Makes the student's weights NaN at the start of epoch 1 (after one good checkpoint)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 0:
            with torch.no_grad():
                pl_module.student.classifier.weight.fill_(float("nan"))


def test_a_non_finite_loss_stops_naming_the_step_the_term_and_the_last_good_checkpoint(tmp_path):
    from clcpmt.config import TrainingError

    cfg = load_config(None, tiny(tmp_path, "nan", method="mean_teacher"))
    with pytest.raises(TrainingError, match=r"step 8 \(epoch 1\): the loss is nan \(not finite in loss/sup.*\).*"
                       r"Last good checkpoint: .*nan/checkpoints/last\.ckpt"):  # fmt: skip
        train(cfg, callbacks=(Poison(),))


def test_unwritable_run_and_cache_folders_fail_before_any_work_and_leave_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # as root, permissions do not stop writes; a file in the path does
    assert main(["train", *tiny(tmp_path, "x"), f"--run_dir={blocker / 'run'}"]) == 2
    assert "run_dir" in capsys.readouterr().err
    assert main(["train", *tiny(tmp_path, "y"), "--data.dataset=folder", f"--data.images={tmp_path}",
                 f"--data.labels={tmp_path / 'none.csv'}"]) == 2  # fmt: skip
    assert "none.csv does not exist" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()  # a failed start leaves no empty run folder
    # a weights file that is not one fails once the data is built: the folder goes too, so the fixed command runs
    (tmp_path / "w.pth").write_text("not weights")
    assert main(["train", *tiny(tmp_path, "z"), f"--model.pretrained={tmp_path / 'w.pth'}"]) == 2
    assert "is not a weights file" in capsys.readouterr().err and not (tmp_path / "z").exists()


def test_a_backbone_typo_is_reported_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    import clcpmt.runner

    monkeypatch.setattr(clcpmt.runner, "prepare_data", lambda cfg: pytest.fail("data read before the model check"))
    assert main(["train", *tiny(tmp_path, "t"), "--model.backbone=resnet18x"]) == 2
    assert "unknown timm model 'resnet18x'; close matches: resnet18" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert main(["train", *tiny(tmp_path, "t"), f"--model.pretrained={tmp_path / 'missing.pth'}"]) == 2
    assert "model.pretrained: weights file" in capsys.readouterr().err and not (tmp_path / "t").exists()


def test_a_bad_image_leaves_no_partial_cache_or_lock(tmp_path):
    import numpy as np
    from PIL import Image

    from clcpmt.data.readers import DataError, cached_images

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        cached_images([good, bad], 8, True, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(DataError, match="cache folder .* is not writable"):
        cached_images([good], 8, True, tmp_path / "good.png" / "cache")


def test_an_image_over_the_decompression_bomb_limit_is_a_clear_error(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from clcpmt.data.readers import DataError, load_image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels > 2 x the limit: PIL refuses
    with pytest.raises(DataError, match=r"cannot read image .*big\.png.*decompression bombs"):
        load_image(tmp_path / "big.png", 8, True)


class LastIsFresh(Callback):
    """At each epoch start, last.ckpt must hold the previous epoch, whether or not it improved the best."""

    seen: list[tuple[int, int]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch:
            ckpt = torch.load(trainer.default_root_dir + "/checkpoints/last.ckpt", weights_only=False)
            LastIsFresh.seen.append((trainer.current_epoch, ckpt["epoch"]))


def test_last_checkpoint_is_written_after_every_epoch_even_one_that_did_not_improve(tmp_path):
    LastIsFresh.seen = []
    cfg = load_config(None, tiny(tmp_path, "every", method="supervised",
                                 **{"train.epochs": 4, "train.steps_per_epoch": 2, "train.lr": 1e-7}))  # fmt: skip
    train(cfg, callbacks=(LastIsFresh(),))
    assert LastIsFresh.seen == [(1, 0), (2, 1), (3, 2)]


def test_a_checkpoint_that_does_not_fit_its_model_is_one_clear_error(tmp_path, capsys):
    from PIL import Image

    run = _finished_run(tmp_path)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    del ckpt["state_dict"]["teacher.classifier.bias"]  # as from another version's model
    torch.save(ckpt, tmp_path / "odd.ckpt")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    assert main(["predict", str(tmp_path / "odd.ckpt"), "--images", str(tmp_path / "imgs"),
                 "--out", str(tmp_path / "p.csv")]) == 2  # fmt: skip
    assert "does not fit the model its own config builds" in capsys.readouterr().err


class Sigterm(Callback):
    """`kill <pid>` of the training process during its second epoch (a scheduler's time limit, `bench` stopping)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_ends_training_with_a_failure_status_and_no_metrics_then_resumes(tmp_path):
    # Lightning exits with status 0 on SIGTERM: a caller would take the half-trained run for a finished one
    cfg = load_config(None, tiny(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        train(cfg, callbacks=(Sigterm(),))
    assert stopped.value.code == 143
    run_dir = tmp_path / "run"
    assert not (run_dir / "metrics.json").exists() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert (run_dir / "metrics.json").is_file()
