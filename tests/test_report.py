"""The HTML report is self-contained (no external URL; every image embedded and decodable) and shows metrics.json."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.report import reliability
from clcpmt.runner import train
from test_train import tiny


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    runs = []
    for method in ("mean_teacher", "clcp_mt"):
        cfg = load_config(None, tiny(tmp, method, method=method, **{"train.epochs": 2, "train.steps_per_epoch": 3}))
        runs.append(train(cfg))
    return runs


def _check_self_contained(page: str) -> None:
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.replace("data:image/png;base64,", ""), re.I)
    sources = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()  # decodable PNG


def test_report_of_two_runs_is_self_contained_and_shows_their_metrics(two_runs, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    page = out.read_text()
    _check_self_contained(page)
    for run in two_runs:
        test = json.loads((run / "metrics.json").read_text())["testing/teacher"]
        for key in ("standard/auc", "standard/bacc", "standard/f1", "auc/MEL", "sens/VASC"):
            value = test[key]
            assert (f"{value:.2f}" if value == value else "nan") in page, (run.name, key)
    assert "Comparison (testing, teacher)" in page and "Seed-paired differences" in page
    for caption in ("ROC curves per class", "reliability diagram", "ECE", "t-SNE", "confusion matrix",
                    "per-class thresholds", "loss terms per epoch", "validation metrics per epoch"):  # fmt: skip
        assert caption in page, caption


def test_every_finished_run_writes_its_report(two_runs):
    page = (two_runs[1] / "report.html").read_text()
    _check_self_contained(page)
    assert len(re.findall("<img", page)) >= 6  # curves, class panels, ROC, reliability, confusion, t-SNE


def test_report_of_a_folder_that_is_no_run_or_never_trained_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("method: {name: clcp_mt}\n")  # a start that never finished an epoch
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "no metrics.json and no checkpoint: no epoch has finished" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_reliability_bins_and_ece_by_hand():
    conf = np.array([0.1, 0.15, 0.9, 0.95, 0.92])
    correct = np.array([0, 1, 1, 1, 0])
    bin_conf, bin_acc, count, ece = reliability(conf, correct, bins=2)
    # bin [0, 0.5]: conf 0.125, acc 0.5 (2 samples); bin (0.5, 1]: conf 0.9233, acc 0.6667 (3 samples)
    assert count.tolist() == [2, 3] and bin_acc == pytest.approx([0.5, 2 / 3])
    assert ece == pytest.approx((abs(0.5 - 0.125) * 2 + abs(2 / 3 - (0.9 + 0.95 + 0.92) / 3) * 3) / 5)


def test_runs_from_before_a_new_config_key_group_and_resume_with_later_ones(tmp_path):
    """A key added to the config (here method.debias_target) is missing from the runs written before it: read with
    its default, such a run still resumes and forms one group with the same setting's later seeds."""
    import yaml

    from clcpmt.config import to_dict, with_defaults
    from clcpmt.report import comparison
    from clcpmt.runner import changed_settings

    now = to_dict(load_config(None, []))
    old = {**now, "method": {k: v for k, v in now["method"].items() if k != "debias_target"}}
    assert changed_settings(old, now) == ["method.debias_target (None -> 'uniform')"]  # as stored: looks changed
    assert changed_settings(with_defaults(old), now) == []
    assert with_defaults({**now, "method": {**now["method"], "removed_key": 1}})["method"]["removed_key"] == 1
    for seed, cfg in ((0, old), (1, now)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        cfg = {**cfg, "data": {**cfg["data"], "seed": seed}, "train": {**cfg["train"], "seed": seed}}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / "metrics.json").write_text(json.dumps({"testing/teacher": {"standard/auc": 90.0 + seed}}))
    page = comparison([tmp_path / "seed0", tmp_path / "seed1"])
    assert "seed0 / seed1" in page and "90.50 ± 0.71" in page
