"""End to end: training on synthetic data, crash-and-resume parity, and a smoke run on real HAM10000 images."""

import json
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from clcpmt.cli import main
from clcpmt.config import ISIC_CLASSES, load_config
from clcpmt.data.readers import read_labels
from clcpmt.data.splits import write_split_csv
from clcpmt.data.synthetic import FINDINGS
from clcpmt.losses import class_prior
from clcpmt.runner import train
from clcpmt.system import build_system, load_system, student_sees_strong


def tiny(tmp_path, name="run", method="clcp_mt", **extra) -> list[str]:
    over = {
        "run_dir": tmp_path / name,
        "data.synthetic_size": 500,
        "data.image_size": 32,
        "data.num_workers": 0,
        "method.name": method,
        "model.backbone": "resnet10t",
        "method.warmup_epochs": 1,
        "method.rampup_epochs": 1,
        "train.epochs": 2,
        "train.steps_per_epoch": 8,
        "train.lr": 0.001,
        "train.progress_bar": False,
        **extra,
    }
    return [f"--{k}={v}" for k, v in over.items()]


def test_short_training_on_synthetic_data_beats_chance(tmp_path):
    cfg = load_config(None, tiny(tmp_path, **{"train.epochs": 4, "train.steps_per_epoch": 25}))
    run_dir = train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["testing/teacher"]
    assert test["standard/auc"] > 75 and test["standard/bacc"] > 18  # chance: AUC 50, balanced accuracy 14.3
    for f in (
        "config.yaml",
        "splits/labeled.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "logs/metrics.csv",
    ):
        assert (run_dir / f).is_file(), f
    log = (run_dir / "logs" / "metrics.csv").read_text()
    assert all(f"threshold/{c}" in log and f"pl_precision/{c}" in log for c in ISIC_CLASSES)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert "method.rule.status.sigma" in ckpt["state_dict"]  # the threshold state travels with the checkpoint
    assert ckpt["hyper_parameters"]["config"]["method"]["name"] == "clcp_mt"


class Crash(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("status", ["confidence", "count"])
def test_killed_run_resumes_where_it_stopped(tmp_path, status):
    extra = {"method.status": status}
    full = train(load_config(None, tiny(tmp_path, "full", **extra)))
    cfg = load_config(None, tiny(tmp_path, "killed", **extra))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, callbacks=(Crash(),))
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(cfg)  # never overwrite a run silently
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    first_epoch_log = (tmp_path / "killed" / "logs" / "metrics.csv").read_text()
    assert "val/auc" in first_epoch_log and (tmp_path / "killed" / "logs" / "resume_1" / "metrics.csv").is_file()
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 16
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert any(k.startswith("teacher.") for k in a["state_dict"]) and any(
        k.startswith("method.rule") for k in a["state_dict"]
    )


def test_real_ham10000_smoke_train_evaluate_predict(tmp_path, shared_data, capsys):
    ham = shared_data / "isic2018_ham10000"
    splits = tmp_path / "splits"
    splits.mkdir()
    for name, n in (("training", 240), ("validation", 60), ("testing", 60)):
        t = read_labels(shared_data / "ssl_splits" / "skin_racmt" / f"{name}.csv", ISIC_CLASSES)
        write_split_csv(splits / f"{name}.csv", list(t.images[:n]), t.targets[:n], ISIC_CLASSES)
    run = tmp_path / "ham"
    args = [
        "train",
        "--config",
        "isic2018_cpu",
        f"--run_dir={run}",
        f"--data.images={ham / 'images_200x150'}",
        f"--data.labels={ham / 'labels' / 'HAM10000_metadata.csv'}",
        f"--data.splits={splits}",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--data.image_size=32",
        "--data.num_workers=0",
        "--train.epochs=1",
        "--train.steps_per_epoch=3",
        "--train.progress_bar=false",
    ]
    assert main(args) == 0
    assert (run / "splits" / "labeled.csv").read_text().count("\n") == 1 + 48  # 20% of 240, header + rows
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "testing", "--out", str(tmp_path / "eval.json")]) == 0
    report = capsys.readouterr().out
    assert "testing, teacher" in report and "testing, student" in report and "confusion" in report
    assert json.loads((tmp_path / "eval.json").read_text())["testing/teacher"]["standard/auc"] > 0
    official = read_labels(ham / "labels" / "ISIC2018_Task3_Test_GroundTruth.csv", ISIC_CLASSES)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(ham / "test_images_224" / f"{im}.jpg") for im in official.images[:20]))
    assert main(["predict", str(run), "--images", str(listing), "--out", str(tmp_path / "pred.csv")]) == 0
    rows = (tmp_path / "pred.csv").read_text().splitlines()
    assert rows[0] == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC" and len(rows) == 21
    assert rows[1].split(",")[0] == official.images[0]
    assert sum(float(v) for v in rows[1].split(",")[1:]) == pytest.approx(1.0, abs=1e-4)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    images = tmp_path / "none"
    images.mkdir()
    assert main(["predict", str(tmp_path / "x.ckpt"), "--images", str(images), "--out", "o.csv"]) == 2


@pytest.mark.parametrize(
    "method, view, strong",
    [
        ("clcp_mt", "default", True),  # method.md: strong view by default ...
        ("mean_teacher", "default", False),  # ... weak for plain Mean Teacher
        ("clcp_mt", "weak", False),
        ("mt_capr", "weak", False),
        ("mean_teacher", "strong", True),
        ("fixmatch", "weak", True),  # the FixMatch family is defined by its strong view
        ("freematch", "default", True),
    ],
)
def test_student_view_option(method, view, strong):
    assert student_sees_strong(method, view) is strong


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizer_option(name, cls):
    cfg = load_config("configs/demo.yaml", [f"--train.optimizer={name}", "--train.weight_decay=0.01"])
    module = build_system(cfg, ISIC_CLASSES, num_unlabeled=10, steps_per_epoch=2)
    opt = module.configure_optimizers()["optimizer"]
    assert type(opt) is cls and opt.defaults["weight_decay"] == 0.01


def test_multilabel_pseudo_label_stats_count_positives_negatives_and_missed():
    """Hand case: 4 unlabeled images, 2 findings; hidden labels only counted, never trained on."""
    cfg = load_config("configs/demo.yaml", ["--model.backbone=resnet10t"])
    module = build_system(cfg, ("a", "b"), num_unlabeled=4, steps_per_epoch=1, task="multi")
    module._reset_pl_stats()
    pseudo = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    hidden = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    module._accumulate_pl_stats(SimpleNamespace(pseudo=pseudo, mask=mask), hidden)
    candidates, accepted, correct, negatives, positives, missed = module.pl_stats
    assert candidates.tolist() == [4, 4]
    assert accepted.tolist() == [2, 1] and correct.tolist() == [1, 1]  # a: images 0 (right), 2 (wrong); b: image 3
    assert negatives.tolist() == [1, 2]  # a: image 1; b: images 0 and 2
    assert positives.tolist() == [2, 2] and missed.tolist() == [1, 1]  # a: image 1 pushed to 0; b: image 0


def test_class_balance_uses_the_labeled_prior_and_it_travels_in_the_checkpoint(tmp_path):
    extra = {"data.dataset": "synthetic_multilabel", "train.epochs": 1, "method.class_balance": "logit_adjust"}
    cfg = load_config(None, tiny(tmp_path, **extra, **{"train.steps_per_epoch": 2}))
    run_dir = train(cfg)
    labeled = read_labels(run_dir / "splits" / "labeled.csv", FINDINGS, "multi")
    expected = class_prior(torch.as_tensor(labeled.targets), len(FINDINGS), "multi")
    module, _ = load_system(run_dir / "checkpoints" / "best.ckpt")
    assert torch.allclose(module.method.prior, expected)


def test_debias_toward_the_labeled_prior_gets_it_from_the_labeled_split_and_keeps_it_in_the_checkpoint(tmp_path):
    """The runner hands the labeled prior to the debiasing (not only to class balancing): were it lost, the
    placeholder would make `labeled` act as `uniform` without a word."""
    extra = {"train.epochs": 1, "train.steps_per_epoch": 2, "method.debias": 1, "method.debias_target": "labeled"}
    run_dir = train(load_config(None, tiny(tmp_path, **extra)))
    module, _ = load_system(run_dir / "checkpoints" / "best.ckpt")  # rebuilt with the placeholder, then loaded
    labeled = read_labels(run_dir / "splits" / "labeled.csv", module.classes, "single")
    expected = class_prior(torch.as_tensor(labeled.targets), len(module.classes))
    assert torch.allclose(module.method.debias.target, expected) and module.method.prior is None
    assert not torch.allclose(expected, torch.full_like(expected, 1 / len(expected)))  # the test can tell them apart
    assert "pseudo-labels debiased towards the labeled class prior, λ 1.0" in (run_dir / "MODEL_CARD.md").read_text()


def test_run_data_reads_the_runs_own_splits_and_says_when_it_cannot(tmp_path, caplog):
    from dataclasses import replace

    from clcpmt.config import Config
    from clcpmt.system import run_data

    base = Config()
    cfg = replace(base, data=replace(base.data, dataset="folder", splits="given/splits"))
    (tmp_path / "splits").mkdir()
    with caplog.at_level("WARNING", logger="clcpmt"):
        assert run_data(cfg, tmp_path).splits == "given/splits"  # a run folder without its split files
    assert "no split files of the run" in caplog.text and "given/splits" in caplog.text
    (tmp_path / "splits" / "testing.csv").write_text("")
    caplog.clear()
    assert run_data(cfg, tmp_path).splits == str(tmp_path / "splits") and not caplog.text
    assert run_data(base, tmp_path) is base.data and not caplog.text  # generated data: nothing to read or say


def test_a_run_says_once_what_it_runs_on_and_lightning_prints_no_device_banner(tmp_path, caplog):
    from clcpmt.cli import main

    with caplog.at_level("INFO"):
        assert main(["train", *tiny(tmp_path, **{"train.epochs": 1, "train.steps_per_epoch": 2})]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "GPU available" in m or "TPU available" in m], said
    assert len([m for m in said if m.startswith("training on cpu: 1 device(s)")]) == 1, said
