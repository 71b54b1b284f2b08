import csv
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clcpmt.audit import COLUMNS, per_class, shares
from clcpmt.bench import (
    bench,
    child_env,
    final_pseudo_labels,
    grid_runs,
    load_grid,
    markdown,
    results_markdown,
    run_name,
    tail_columns,
)
from clcpmt.config import ConfigError
from clcpmt.stats import paired_difference

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
ISIC = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def row_run(row: dict) -> str:
    return run_name(row["method"], float(row["labeled"]), int(row["seed"]), row["variant"])


def test_grid_runs_and_errors(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("config: demo\nmethods: [a, b]\nseeds: [0, 1]\nextra_runs: ['a:0.1:0', 'a:0.2:0']\n")
    runs = grid_runs(load_grid(path))
    assert runs == [("a", 0.2, 0, ""), ("b", 0.2, 0, ""), ("a", 0.2, 1, ""), ("b", 0.2, 1, ""), ("a", 0.1, 0, "")]
    path.write_text("config: demo\nmethods: [a]\nseeds: [0]\nvariants: {t8: [--method.tau_min=0.8]}\n")
    assert grid_runs(load_grid(path)) == [("a", 0.2, 0, ""), ("a", 0.2, 0, "t8")]
    assert run_name("a", 0.2, 0, "t8") == "a_lab0.2_seed0_t8"
    path.write_text(
        "config: demo\nmethods: [a, b]\nseeds: [0]\nvariants: {t8: []}\ncross_variants: false\n"
        "extra_runs: ['b:0.2:1:t8']\n"
    )
    assert grid_runs(load_grid(path)) == [("a", 0.2, 0, ""), ("b", 0.2, 0, ""), ("b", 0.2, 1, "t8")]
    path.write_text("config: demo\nextra_runs: ['b:0.2:1:nope']\n")
    with pytest.raises(ConfigError, match=r"extra_runs entry 'b:0.2:1:nope' must be"):
        load_grid(path)
    path.write_text("config: demo\nseed: [0]\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: unknown key 'seed'; did you mean 'seeds'"):
        load_grid(path)
    path.write_text("config: demo\nvariants: [a]\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: variants must be a mapping"):
        load_grid(path)
    path.write_text("config: demo\ntable_split: test\n")
    with pytest.raises(ConfigError, match=r"table_split must be testing or validation"):
        load_grid(path)


def test_markdown_mean_and_std():
    rows = [{"method": "m", "labeled": 0.2, "seed": s, "standard/auc": v} for s, v in ((0, 80.0), (1, 90.0))]
    table = markdown(rows)
    assert "| m | 0.2 | 2 | 85.00 ± 7.07 |" in table
    assert table.splitlines()[0] == "| method | labeled | n | AUC |"  # columns no run has are left out


def test_tail_columns_are_the_rarest_classes_of_the_table_split_in_class_order():
    support = {"a": 50, "b": 9, "c": 40, "d": 3, "e": 5}  # any data set's classes: nothing is hard-coded for ISIC
    rows = [{"method": "m", "labeled": 0.2, "seed": s} | {f"support/{c}": n for c, n in support.items()}
            | {f"sens/{c}": 10.0 * s for c in support} | {"standard/auc": 80.0} for s in (0, 1)]  # fmt: skip
    assert tail_columns(rows) == [("sens/b", "b rec"), ("sens/d", "d rec"), ("sens/e", "e rec")]
    assert tail_columns(rows, k=1) == [("sens/d", "d rec")]  # the rarest; the list above is in class order
    csv_like = rows + [{"method": "x", "labeled": 0.2, "seed": 0} | {f"support/{c}": "" for c in support}]
    assert tail_columns(csv_like) == tail_columns(rows)  # a results.csv row without them holds ""
    head = markdown(rows).splitlines()[0]
    assert head == "| method | labeled | n | AUC | b rec | d rec | e rec |"
    assert "Per-class recall (sensitivity), testing split" in results_markdown(rows)
    multi = [{k: v for k, v in r.items() if not k.startswith("support/")} for r in rows]  # multi-label: no support
    assert tail_columns(multi) == [] and "Per-class recall" not in results_markdown(multi)


def test_final_pseudo_labels_are_the_last_logged_epochs_also_of_a_resumed_run(tmp_path):
    log = tmp_path / "logs" / "metrics.csv"  # Lightning's CSV: training-step rows without thresholds between epochs
    log.parent.mkdir()
    log.write_text(
        "epoch,threshold/a,threshold/b,accept_rate/a,pl_precision/a,val/auc\n"
        "0,0.9,0.8,0.1,0.5,\n0,,,,,70\n1,0.7,0.6,0.25,0.75,\n1,,,,,75\n"
    )
    assert final_pseudo_labels(tmp_path) == {
        "final_threshold/a": 0.7,
        "final_threshold/b": 0.6,
        "final_accept_rate/a": 25.0,
        "final_pl_precision/a": 75.0,
    }
    for n, value in ((2, 0.5), (10, 0.4)):  # resumed twice more: logs/resume_N/, in numeric order
        (tmp_path / "logs" / f"resume_{n}").mkdir()
        (tmp_path / "logs" / f"resume_{n}" / "metrics.csv").write_text(f"epoch,threshold/a\n{n},{value}\n")
    assert final_pseudo_labels(tmp_path) == {"final_threshold/a": 0.4}
    assert final_pseudo_labels(tmp_path / "absent") == {}


def test_tiny_grid_runs_once_and_skips_finished_runs(tmp_path):
    path = tmp_path / "g.yaml"
    out = tmp_path / "bench"
    path.write_text(
        f"config: demo\nout: {out}\nmethods: [supervised, fixmatch]\nseeds: [0]\n"
        "overrides: [--data.synthetic_size=300, --train.epochs=1, --train.steps_per_epoch=3, --data.num_workers=0]\n"
    )
    bench(path)
    text = (out / "results.md").read_text()
    assert "| supervised | 0.2 | 1 |" in text and "| fixmatch | 0.2 | 1 |" in text
    assert text.splitlines()[2].endswith("| val AUC |")  # the validation column beside the testing ones
    row = next(csv.DictReader(open(out / "results.csv")))
    assert "val_standard/auc" in row and "val_auc/MEL" in row and "test_standard/auc" not in row
    # images per class of the testing split (from the confusion matrix), counted here from the run's split file
    with open(out / row_run(row) / "splits" / "testing.csv", newline="") as f:
        counted = [0] * 7
        for r in csv.DictReader(f):
            counted[[float(r[c]) for c in ISIC].index(1.0)] += 1
    assert [float(row[f"support/{c}"]) for c in ISIC] == counted and sum(counted) > 0
    assert (out / "fixmatch_lab0.2_seed0" / "thresholds.png").is_file()
    grid_page = (out / "report.html").read_text()  # the grid's report: the comparison, and a link to each run's own
    assert "Comparison (testing, teacher)" in grid_page and 'href="fixmatch_lab0.2_seed0/report.html"' in grid_page
    per_class, rest = text.split("Per-class AUC")[1].split("Per-class thresholds")
    thresholds, pseudo_labels = rest.split("Per-class acceptance")
    assert "| supervised | 0.2 | 1 |" in per_class and "| MEL | NV |" in per_class
    assert "supervised" not in thresholds and "| fixmatch | 0.2 | 1 | " + " | ".join(["0.95"] * 7) + " |" in thresholds
    assert "supervised" not in pseudo_labels
    assert "final_accept_rate/MEL" in row and re.search(r"\| fixmatch \| 0\.2 \| 1 \| [\d.]+ \|", pseudo_labels)
    # 3 steps at tau = 0.95 accept nothing: every precision is undefined (nan), and no empty table is printed
    assert "Per-class precision" not in pseudo_labels
    stamp = (out / "supervised_lab0.2_seed0" / "metrics.json").stat().st_mtime
    bench(path)
    assert (out / "supervised_lab0.2_seed0" / "metrics.json").stat().st_mtime == stamp


def test_variants_run_in_parallel_and_are_tabulated_on_validation(tmp_path, monkeypatch):
    import clcpmt.bench as bench_module

    threads, run_child = [], bench_module.run_child
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def recording_run_child(cmd, **kw):
        threads.append(kw["env"]["OMP_NUM_THREADS"])
        run_child(cmd, **kw)

    monkeypatch.setattr(bench_module, "run_child", recording_run_child)
    path = tmp_path / "g.yaml"
    out = tmp_path / "bench"
    path.write_text(
        f"config: demo\nout: {out}\nmethods: [clcp_mt]\nseeds: [0]\njobs: 2\ntable_split: validation\n"
        "variants: {tmin8: [--method.tau_min=0.8]}\n"
        "overrides: [--data.synthetic_size=300, --train.epochs=1, --train.steps_per_epoch=3, --data.num_workers=0]\n"
    )
    bench(path)
    text = (out / "results.md").read_text()
    assert text.startswith("validation split") and "ISIC test BAcc" not in text and "val AUC" not in text
    assert "| clcp_mt | 0.2 | 1 |" in text and "| clcp_mt +tmin8 | 0.2 | 1 |" in text
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert threads == [str(max(1, cores // 2))] * 2  # each of the 2 runs at once gets its share of the cores
    config = (out / "clcp_mt_lab0.2_seed0_tmin8" / "config.yaml").read_text()
    assert "tau_min: 0.8" in config and (out / "clcp_mt_lab0.2_seed0_tmin8" / "train.log").is_file()
    # the CSV holds the table's split and, prefixed test_, the testing headline and per-class AUC
    metrics = json.loads((out / "clcp_mt_lab0.2_seed0" / "metrics.json").read_text())
    row = next(r for r in csv.DictReader(open(out / "results.csv")) if r["variant"] == "")
    assert float(row["standard/auc"]) == pytest.approx(metrics["validation/teacher"]["standard/auc"])
    assert float(row["test_standard/auc"]) == pytest.approx(metrics["testing/teacher"]["standard/auc"])
    assert float(row["test_auc/MEL"]) == pytest.approx(metrics["testing/teacher"]["auc/MEL"])
    assert "val_standard/auc" not in row


def test_parallel_runs_share_the_cores_unless_the_user_set_the_threads():
    assert child_env(2, {"PATH": "/bin"}, cores=16)["OMP_NUM_THREADS"] == "8"
    assert child_env(3, {}, cores=2)["OMP_NUM_THREADS"] == "1"  # never 0 threads
    assert child_env(2, {"OMP_NUM_THREADS": "4"}, cores=16)["OMP_NUM_THREADS"] == "4"  # the user's choice stands
    assert "OMP_NUM_THREADS" not in child_env(1, {}, cores=16)  # one run alone uses every core, as PyTorch would
    assert child_env(2, {"PATH": "/bin"}, cores=16)["PATH"] == "/bin"


def test_wall_time_sums_the_attempts_of_a_resumed_run_and_a_finished_run_drops_last_ckpt(tmp_path, monkeypatch):
    import time as time_module

    import clcpmt.bench as bench_module

    path = tmp_path / "g.yaml"
    path.write_text(f"config: demo\nout: {tmp_path / 'b'}\nmethods: [supervised]\nseeds: [0]\n")
    grid = load_grid(path)
    run_dir = tmp_path / "b" / "supervised_lab0.2_seed0"
    clock = iter([100.0, 130.0, 500.0, 545.0])  # attempt 1 runs 30 s and is interrupted, attempt 2 runs 45 s
    monkeypatch.setattr(time_module, "time", lambda: next(clock))

    def interrupted(cmd, **kw):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "config.yaml").write_text("")  # a started run: resumed next time
        (run_dir / "checkpoints" / "last.ckpt").write_text("")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_module, "run_child", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_module.run_one(grid, "supervised", 0.2, 0)
    assert (run_dir / "wall_time.txt").read_text() == "30\n"

    def finishes(cmd, **kw):
        assert "--resume" in cmd
        (run_dir / "checkpoints" / "best.ckpt").write_text("")
        (run_dir / "metrics.json").write_text("{}")

    monkeypatch.setattr(bench_module, "run_child", finishes)
    bench_module.run_one(grid, "supervised", 0.2, 0)
    assert (run_dir / "wall_time.txt").read_text() == "75\n"
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # finished: only best.ckpt is kept
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    # keep_last: true keeps it
    (run_dir / "metrics.json").unlink()
    (run_dir / "checkpoints" / "last.ckpt").write_text("")
    clock = iter([0.0, 1.0])
    bench_module.run_one(dataclasses.replace(grid, keep_last=True), "supervised", 0.2, 0)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def _script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package)."""
    path = next(BENCHMARKS.rglob(f"{name}.py"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_difference_hand_case():
    # seeds both have: 0, 1, 3; differences +1, -2, +4 -> mean +1; sample std 3 -> SE 3 / sqrt(3) = 1.7321
    a = {0: 51.0, 1: 48.0, 2: 99.0, 3: 54.0}
    b = {0: 50.0, 1: 50.0, 3: 50.0, 7: 0.0}
    mean, se, n = paired_difference(a, b)
    assert (mean, n) == (1.0, 3) and se == pytest.approx(3 / 3**0.5)
    assert paired_difference({0: 2.0}, {0: 1.0})[:2] == (1.0, pytest.approx(math.nan, nan_ok=True))  # one seed: no SE
    none = paired_difference({0: 2.0}, {1: 1.0})
    assert none[2] == 0 and math.isnan(none[0]) and math.isnan(none[1])


def test_paired_differences_by_seed(tmp_path, capsys):
    from clcpmt.cli import main

    path = tmp_path / "results.csv"
    path.write_text(
        "method,variant,labeled,seed,standard/auc\na,,0.2,0,90\na,,0.2,1,80\nb,v,0.2,0,88\nb,v,0.2,1,81\nb,v,0.2,2,70\n"
    )
    assert main(["compare", str(path), "--pair", "a", "b+v", "--metric", "standard/auc"]) == 0
    out = capsys.readouterr().out  # seeds both rows have: 0 and 1; differences +2 and -1
    assert "seeds [0, 1]: +2.00 / -1.00; mean +0.50" in out
    # SE of the differences: stdev(+2, -1) / sqrt(2) = 2.1213 / 1.4142 = 1.50; each row on seeds 0-1 only
    assert "(SE 1.50; a 85.00 ± 7.07, b+v 84.50 ± 4.95)" in out
    path.write_text("method,variant,labeled,seed,standard/auc\na,,0.2,0,90\nb,,0.2,0,90.004\n")
    assert main(["compare", str(path), "--pair", "a", "b", "--metric", "standard/auc"]) == 0
    assert "seeds [0]: +0.00; mean +0.00" in capsys.readouterr().out  # -0.004 rounds to zero: no "-0.00"
    path.write_text("method,variant,labeled,seed,standard/auc\na,,0.2,0,90\nb,,0.2,1,88\n")
    assert main(["compare", str(path), "--pair", "a", "b", "--metric", "standard/auc"]) == 2
    assert "'a' (seeds [0]) and 'b' (seeds [1]) share no seed" in capsys.readouterr().err
    assert main(["compare", str(path), "--pair", "a", "b", "--metric", "auc"]) == 2
    assert "--metric auc: no such column" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_pseudo_label_audit_shares_hand_case():
    p = np.array([[0.9, 0.01], [0.3, 0.02], [0.04, 0.6], [0.01, 0.03]])
    pos = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=bool)
    s = shares(p, pos, low=0.05)
    # finding 0: positives 0.9, 0.3 -> 1/2 at >= 0.5, 0/2 at <= 0.05; negatives 0.04, 0.01 -> 2/2 at <= 0.05
    # finding 1: positives 0.02, 0.6 -> 1/2 and 1/2; negatives 0.01, 0.03 -> 2/2
    assert np.allclose(s, [[0.5, 0.5], [0.0, 0.5], [1.0, 1.0]])


def test_tail_audit_per_class_hand_case():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 0, 1, 1])
    t = per_class(p, y, np.array([0.8, 0.6]))
    # predicted 0, 0, 1, 0; confidences 0.9, 0.6, 0.7, 0.55; accepted (>= 0.8 for 0, >= 0.6 for 1): yes, no, yes, no
    # class 0: n 2, predicted 3/4, true 2/4, recall 2/2, p(true) (0.9 + 0.6) / 2, reached 1/2, precision 1/1
    # class 1: n 2, predicted 1/4, true 2/4, recall 1/2, p(true) (0.7 + 0.45) / 2, reached 1/2, precision 1/1
    assert np.allclose(t[:, 0], [2, 75, 50, 100, 0.75, 0.8, 50, 100])
    assert np.allclose(t[:, 1], [2, 25, 50, 50, 0.575, 0.6, 50, 100])
    # a class nothing is accepted for has no precision; a class without images no recall
    t = per_class(p[:3], np.array([0, 0, 0]), np.array([0.95, 0.95]))
    assert np.isnan(t[7]).all() and np.isnan(t[3, 1]) and t[6, 0] == 0


def test_clcpmt_audit_of_single_and_multi_label_runs_and_its_errors(tmp_path, capsys):
    from clcpmt.cli import main

    def tiny(name, *extra):
        args = ["train", "--config=demo", f"--run_dir={tmp_path / name}", "--data.synthetic_size=300",
                "--train.epochs=1", "--train.steps_per_epoch=2", "--data.num_workers=0", "--quiet", *extra]  # fmt: skip
        assert main(args) == 0

    tiny("fix", "--method.name=fixmatch")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "fix")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("validation, pseudo-labelling model of best.ckpt; mean over 1 run(s): fix")
    assert table[1] == "| class | " + " | ".join(COLUMNS) + " |" and len(table) == 3 + 7
    assert table[3].startswith("| MEL | ") and "| 0.95 |" in table[3]  # FixMatch's fixed threshold
    tiny("multi", "--method.name=clcp_mt", "--data.dataset=synthetic_multilabel")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "multi"), "--low", "0.05"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("unlabeled training images, teacher of last.ckpt") and "p ≤ 0.05" in table[1]
    # errors: no checkpoint, no thresholds, runs of two tasks, a multi-label run without last.ckpt
    assert main(["audit", str(tmp_path / "nothing")]) == 2
    assert "nothing/checkpoints/best.ckpt not found" in capsys.readouterr().err
    tiny("sup", "--method.name=supervised")
    capsys.readouterr()
    assert main(["audit", str(tmp_path / "sup")]) == 2
    assert "method supervised has no pseudo-label thresholds" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "fix"), str(tmp_path / "multi")]) == 2
    assert "differ in task or classes" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "fix"), "--low", "0.05"]) == 2
    assert "--low is for multi-label runs" in capsys.readouterr().err
    (tmp_path / "multi" / "checkpoints" / "last.ckpt").unlink()
    assert main(["audit", str(tmp_path / "multi")]) == 2
    err = capsys.readouterr().err
    assert "multi/checkpoints/last.ckpt not found" in err and "keep_last: true" in err


def test_debias_audit_candidates_and_capr_steady_state_hand_case():
    audit = _script("debias_audit")
    # predicted 0, 0, 1 with confidences 0.9, 0.8, 0.7: sigma = (0.85, 0.7), beta = (1, 0.8235),
    # M(beta) = beta / (2 - beta) = (1, 0.7), T = clip(0.95 · M, 0.5, 0.95) = (0.95, 0.665)
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    assert torch.allclose(audit.capr_steady_state(p, 0.95, 0.5), torch.tensor([0.95, 0.665]), atol=1e-4)
    assert torch.allclose(audit.capr_steady_state(p, 0.95, 0.8), torch.tensor([0.95, 0.8]), atol=1e-6)
    # p = (0.6, 0.4), p_bar = (0.8, 0.2) (the mean of the unlabeled rows), pi = (0.5, 0.5): uniform lam 1 ->
    # (0.75, 2) / 2.75; labeled lam 1 -> p · pi / p_bar = (0.375, 1) / 1.375, the same here (pi uniform);
    # pi = (0.8, 0.2) = p_bar: unchanged
    q, unlabeled = torch.tensor([[0.6, 0.4]]), torch.tensor([[0.9, 0.1], [0.7, 0.3]])
    p_bar = unlabeled.mean(0)
    assert torch.equal(audit.adjust(q, unlabeled, torch.tensor([0.5, 0.5]), "", 0.0), q)
    expected = torch.tensor([[0.75, 2.0]]) / 2.75
    assert torch.allclose(audit.adjust(q, unlabeled, torch.tensor([0.5, 0.5]), "uniform", 1.0), expected, atol=1e-6)
    assert torch.allclose(audit.adjust(q, unlabeled, torch.tensor([0.5, 0.5]), "labeled", 1.0), expected, atol=1e-6)
    assert torch.allclose(audit.adjust(q, unlabeled, p_bar, "labeled", 1.0), q, atol=1e-6)


def test_the_configuration_reference_names_every_grid_key():
    """docs/configuration.md is the grid file's reference: a key added to Grid must be named there."""
    from clcpmt.bench import Grid

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [f.name for f in dataclasses.fields(Grid) if f"`{f.name}`" not in docs]
    assert not missing, f"docs/configuration.md does not name the grid keys {missing}"


def test_sigterm_stops_the_training_process_and_starts_no_other(tmp_path):
    """`kill <bench>` must not orphan the run's training process (it would go on training, and a restarted bench
    would train the same folder twice at once), and must not start the grid's next run."""
    import os
    import signal
    import subprocess
    import textwrap
    import time

    pids = tmp_path / "pids.txt"
    fake_train = tmp_path / "fake_python.sh"  # stands in for `python -m clcpmt.cli train`: logs its pid, then waits
    fake_train.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 120\n")
    fake_train.chmod(0o755)
    grid = tmp_path / "g.yaml"
    grid.write_text(f"config: demo\nout: {tmp_path / 'out'}\nmethods: [supervised, mean_teacher]\nseeds: [0]\n")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys
                from clcpmt import bench
                sys.executable = {str(fake_train)!r}
                bench.bench({str(grid)!r})
            """),
        ]
    )
    try:
        deadline = time.time() + 60
        while not pids.is_file() and time.time() < deadline:
            time.sleep(0.1)
        assert pids.is_file(), "the first run never started"
        child = int(pids.read_text().split()[0])
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.kill(child, 0)  # the training process is gone (and reaped by bench)
    finally:  # whatever failed above, leave no process behind
        parent.kill()
        for pid in pids.read_text().split() if pids.is_file() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert pids.read_text().split() == [str(child)], "bench started the next run after SIGTERM"


def test_a_typo_in_any_run_is_an_error_before_the_first_run_trains(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        f"config: demo\nout: {tmp_path / 'b'}\nmethods: [supervised]\nseeds: [0]\ncross_variants: false\n"
        "variants: {late: [--method.tau_mn=0.8]}\nextra_runs: ['clcp_mt:0.2:2:late']\n"
    )
    with pytest.raises(ConfigError, match=r"g\.yaml: run clcp_mt_lab0.2_seed2_late: .*'method.tau_mn'"):
        bench(path)
    assert not (tmp_path / "b" / "supervised_lab0.2_seed0").exists()  # nothing trained


GRIDS = sorted(p for p in BENCHMARKS.rglob("*.yaml") if "records" not in p.relative_to(BENCHMARKS).parts)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_every_shipped_grid_builds_every_run(grid):
    from clcpmt.bench import check_runs

    check_runs(load_grid(grid), grid)


def test_compare_table_paired_differences_and_gap_closed(tmp_path, capsys, monkeypatch):
    """Hand-computed: CLCP-MT − MT per seed +2, +4: mean +3.00, SE stdev(2, 4)/√2 = 1.00; CLCP-MT − supervised +6, +5:
    +5.50 ± 0.50; MT − supervised +4, +1: +2.50 ± 1.50; gap closed by CLCP-MT on the seeds it shares with supervised
    5.5 / (60 − 41) = 29 % (its third seed is in its mean, not in the pairs), by MT 2.5 / 19 = 13 %; at 5 % one seed:
    no SE, (33 − 30) / (60 − 30) = 10 %; the debias variant, seed 0 only: 10 / (60 − 40) = 50 %."""
    from clcpmt.cli import main

    path = tmp_path / "results.csv"
    rows = [
        ("supervised", 1.0, 0, 60),
        ("supervised", 0.2, 0, 40),
        ("supervised", 0.2, 1, 42),
        ("mean_teacher", 0.2, 0, 44),
        ("mean_teacher", 0.2, 1, 43),
        ("clcp_mt", 0.2, 0, 46),
        ("clcp_mt", 0.2, 1, 47),
        ("clcp_mt", 0.2, 2, 47.5),  # no partner seed: left out of the paired differences, not of the mean
        ("clcp_mt", 0.2, 0, 50, "debias"),  # a variant is its own row, paired with the others on its seeds
        ("supervised", 0.05, 0, 30),
        ("clcp_mt", 0.05, 0, 33),
    ]
    text = "method,variant,labeled,seed,standard/auc,standard/bacc\n"
    text += "".join(f"{r[0]},{r[4] if len(r) > 4 else ''},{r[1]},{r[2]},90,{r[3]}\n" for r in rows)
    path.write_text(text)
    assert main(["compare", str(path), "--metric", "standard/bacc"]) == 0
    out = capsys.readouterr().out
    assert "| clcp_mt | 0.2 | 3 | 90.00 ± 0.00 | 46.83 ± 0.76 |" in out
    assert "| clcp_mt | 0.2 | +3.00 ± 1.00 | +5.50 ± 0.50 | 29 % |" in out
    assert "| mean_teacher | 0.2 |  | +2.50 ± 1.50 | 13 % |" in out
    assert "| clcp_mt | 0.05 | - | +3.00 (n = 1) | 10 % |" in out
    assert "| clcp_mt+debias | 0.2 | +6.00 (n = 1) | +10.00 (n = 1) | 50 % |" in out
    assert "| supervised | 1 | 1 |" in out and "| supervised | 1 |  |" not in out  # the ceiling: no difference row


def test_compare_runs_lists_every_seed_with_its_validation_auc_and_wall_time(tmp_path, capsys):
    """--runs: one row per run in the grid's order, seeds ascending, values as written ("-" where one is missing)."""
    from clcpmt.cli import main

    path = tmp_path / "results.csv"
    path.write_text(
        "method,variant,labeled,seed,standard/auc,standard/bacc,val_standard/auc,wall_s\n"
        "supervised,bl48,1.0,0,95.631,58.35,96.21,1517.4\n"
        "clcp_mt,,0.2,1,92.41,50.58,92.89,1288\n"
        "clcp_mt,,0.2,0,92.30,50.25,91.97,\n"
    )
    assert main(["compare", str(path), "--runs", "--metric", "standard/bacc"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert lines == [
        "| method | labeled | seed | AUC | BAcc | val AUC | wall s |",
        "| supervised+bl48 | 1 | 0 | 95.63 | 58.35 | 96.21 | 1517 |",
        "| clcp_mt | 0.2 | 0 | 92.30 | 50.25 | 91.97 | - |",
        "| clcp_mt | 0.2 | 1 | 92.41 | 50.58 | 92.89 | 1288 |",
    ]
    assert main(["compare", str(path), "--runs", "--pair", "clcp_mt", "supervised"]) == 2
    assert "--pair and --runs" in capsys.readouterr().err


def test_a_failed_run_does_not_stop_the_grid_and_is_named_at_the_end(tmp_path, monkeypatch):
    import subprocess

    import clcpmt.bench as bench_module
    from clcpmt.config import TrainingError

    path = tmp_path / "g.yaml"
    path.write_text(f"config: demo\nout: {tmp_path / 'b'}\nmethods: [supervised, mean_teacher, clcp_mt]\nseeds: [0]\n")
    started = []

    def fake_child(cmd, **kw):
        run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--run_dir="))
        started.append(Path(run_dir).name)
        if "mean_teacher" in run_dir:
            raise subprocess.CalledProcessError(1, cmd)
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "metrics.json").write_text("{}")  # finished

    monkeypatch.setattr(bench_module, "run_child", fake_child)
    monkeypatch.setattr(bench_module, "collect", lambda grid: [])  # the fake runs have no metrics to tabulate
    monkeypatch.setattr("clcpmt.report.write_report", lambda *a, **k: None)
    with pytest.raises(TrainingError, match=r"1 run\(s\) of .*g\.yaml failed: mean_teacher_lab0.2_seed0 "):
        bench(path)
    assert started == ["supervised_lab0.2_seed0", "mean_teacher_lab0.2_seed0", "clcp_mt_lab0.2_seed0"]


def test_a_signal_during_popen_still_stops_the_new_process(monkeypatch):
    """The handler snapshots the running processes; one started between the stop check and its registration must
    stop itself."""
    import subprocess

    import clcpmt.bench as bench_module

    real_popen = subprocess.Popen

    def popen_then_signal(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        bench_module._stop_children()  # what SIGTERM's handler does, at the worst moment
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_signal)
    try:
        start = time.time()
        with pytest.raises(subprocess.CalledProcessError):  # terminated: a non-zero exit
            bench_module.run_child(["sleep", "60"])
        assert time.time() - start < 30
    finally:
        bench_module._stopping.clear()


def test_a_run_that_exits_0_unfinished_is_failed_and_never_officially_evaluated(tmp_path, monkeypatch):
    """A training process stopped early that still exits 0 must not get an official test result from its partial
    best.ckpt; a result left by an earlier attempt is dropped when the run trains again."""
    import os
    import subprocess

    import clcpmt.bench as bench_module

    path = tmp_path / "g.yaml"
    labels = tmp_path / "official.csv"
    path.write_text(
        f"config: demo\nout: {tmp_path / 'b'}\nmethods: [supervised]\nseeds: [0]\n"
        f"official_labels: {labels}\nofficial_images: {tmp_path}\n"
    )
    grid = load_grid(path)
    run_dir = tmp_path / "b" / "supervised_lab0.2_seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    (run_dir / "official_test.json").write_text('{"standard/bacc": 1.0}')  # from an attempt that stopped early
    evaluated = []
    monkeypatch.setattr("clcpmt.inference.evaluate_csv", lambda *a, **k: evaluated.append(a))
    monkeypatch.setattr(bench_module, "run_child", lambda cmd, **kw: None)  # exit 0, no metrics.json
    with pytest.raises(subprocess.CalledProcessError):
        bench_module.run_one(grid, "supervised", 0.2, 0)
    assert not evaluated and not (run_dir / "official_test.json").exists()

    # a finished run whose official result is older than its best.ckpt (written by an older bench) is re-evaluated
    monkeypatch.setattr(
        "clcpmt.inference.evaluate_csv", lambda *a, **k: evaluated.append(a) or {"external/teacher": {}}
    )
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "official_test.json").write_text('{"standard/bacc": 1.0}')
    (run_dir / "checkpoints" / "best.ckpt").write_text("")
    old = (run_dir / "official_test.json").stat().st_mtime - 60
    os.utime(run_dir / "official_test.json", (old, old))
    bench_module.run_one(grid, "supervised", 0.2, 0)
    assert len(evaluated) == 1 and (run_dir / "official_test.json").read_text() == "{}"
    bench_module.run_one(grid, "supervised", 0.2, 0)  # now fresh: not evaluated again
    assert len(evaluated) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_training_process_stops_when_bench_is_killed_by_sigkill(tmp_path):
    """SIGKILL (or the OOM killer) gives bench no chance to stop its runs: the run stops itself."""
    import os
    import signal
    import subprocess
    import textwrap
    import time

    pid_file = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import os, pathlib, time
        from clcpmt.bench import PARENT_ENV, stop_with_parent
        stop_with_parent(int(os.environ[PARENT_ENV]))
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(120)
    """)
    fake_bench = textwrap.dedent(f"""
        import sys
        from clcpmt.bench import run_child
        run_child([sys.executable, "-c", {child!r}])
    """)
    parent = subprocess.Popen([sys.executable, "-c", fake_bench])
    try:
        deadline = time.time() + 60
        while not pid_file.is_file() and time.time() < deadline:
            time.sleep(0.1)
        assert pid_file.is_file(), "the child never started"
        pid = int(pid_file.read_text())
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break  # dead, not yet reaped by its new parent (in a container, maybe never)
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the training process outlived the SIGKILLed bench")
    finally:
        parent.kill()


@pytest.mark.parametrize("script", sorted(str(p.relative_to(BENCHMARKS)) for p in BENCHMARKS.rglob("*.py")))
def test_every_benchmark_script_imports_and_answers_help(script):
    """The scripts are not imported by the suite otherwise: a moved name would break them unnoticed."""
    import subprocess

    path = BENCHMARKS / script
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]


def test_records_carry_a_grid_to_another_machine_without_checkpoints(tmp_path, monkeypatch, capsys):
    import clcpmt.bench as bench_module

    path, out, records = tmp_path / "g.yaml", tmp_path / "bench", tmp_path / "records"
    path.write_text(
        f"config: demo\nout: {out}\nrecords: {records}\nmethods: [supervised]\nseeds: [0]\n"
        "overrides: [--data.synthetic_size=300, --train.epochs=1, --train.steps_per_epoch=2, --data.num_workers=0]\n"
    )
    bench(path)
    kept = records / "supervised_lab0.2_seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "logs", "machine.txt", "metrics.json",
                                                      "wall_time.txt"]  # fmt: skip
    assert "cores" in (kept / "machine.txt").read_text() and not list(records.glob("*.part"))
    table = (out / "results.md").read_text()

    # another machine: no run folders, only the records; nothing trains, the table is the same
    import shutil

    shutil.rmtree(out)

    def no_training(cmd, **kw):
        raise AssertionError(f"a recorded run was trained again: {cmd}")

    monkeypatch.setattr(bench_module, "run_child", no_training)
    partial = out / "supervised_lab0.2_seed0"  # an unfinished attempt here: replaced, none of its files mixed in
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "config.yaml").write_text("")
    (partial / "checkpoints" / "best.ckpt").write_text("")
    bench(path)
    assert (out / "results.md").read_text() == table
    assert not (partial / "checkpoints").exists() and "an unfinished attempt, replaced" in capsys.readouterr().err
    assert "finished on another machine" in (out / "report.html").read_text()  # no link to a report not there

    # a run finished before `records` was set is recorded by the next bench (or --report)
    shutil.rmtree(records)
    bench(path, only_report=True)
    assert (records / "supervised_lab0.2_seed0" / "metrics.json").is_file()
    path.write_text(path.read_text().replace(f"records: {records}", f"records: {out}"))
    with pytest.raises(ConfigError, match="records must be a folder other than out"):
        load_grid(path)
