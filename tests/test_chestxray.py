"""Multi-label path: NIH ChestX-ray14 formats, MedMNIST npz, patient-level splits, multi-label thresholds."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clcpmt.cli import main
from clcpmt.config import load_config
from clcpmt.data.chestxray import (
    CXR14_FINDINGS,
    draw_labeled_multilabel,
    read_data_entry,
    read_image_list,
    read_medmnist,
    split_by_patient,
)
from clcpmt.data.readers import DataError
from clcpmt.data.sources import prepare_data
from clcpmt.data.synthetic import make_synthetic_multilabel
from clcpmt.thresholds import CAPRThreshold

HEADER = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
    "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]  # fmt: skip


def write_nih(root, n_patients=30, per_patient=3, seed=0):
    """A tiny NIH download: Data_Entry CSV, images spread over images_001/images and images_002/images (8- and
    16-bit PNGs), train_val_list.txt and test_list.txt split by patient."""
    rng = np.random.default_rng(seed)
    rows, names = [], []
    for p in range(1, n_patients + 1):
        for k in range(per_patient):
            name = f"{p:08d}_{k:03d}.png"
            found = [f for f in CXR14_FINDINGS if rng.random() < (0.4 if f != "Hernia" else 0.05)]
            if p == 1 and k == 0:
                found = ["Hernia"]
            rows.append([name, "|".join(found) or "No Finding", k, p, 50, "M", "PA", 1024, 1024, 0.14, 0.14])
            names.append(name)
            folder = root / ("images_001" if p % 2 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            if p % 3:
                Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / name)
            else:
                Image.fromarray(rng.integers(0, 60000, (40, 40)).astype(np.uint16)).save(folder / name)
    with open(root / "Data_Entry_2017_v2020.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(rows)
    test_patients = set(range(n_patients - 5, n_patients + 1))
    (root / "train_val_list.txt").write_text("\n".join(n for n in names if int(n[:8]) not in test_patients) + "\n")
    (root / "test_list.txt").write_text("\n".join(n for n in names if int(n[:8]) in test_patients) + "\n")
    return root


def nih_config(root, tmp_path, *extra):
    return load_config(None, [
        "--data.dataset=chestxray14", f"--data.images={root}", f"--data.labels={root / 'Data_Entry_2017_v2020.csv'}",
        f"--data.train_list={root / 'train_val_list.txt'}", f"--data.test_list={root / 'test_list.txt'}",
        "--data.image_size=16", f"--data.cache_dir={tmp_path / 'cache'}", "--data.val_fraction=0.2", *extra,
    ])  # fmt: skip


def test_read_data_entry_multi_hot_and_no_finding(tmp_path):
    write_nih(tmp_path)
    t = read_data_entry(tmp_path / "Data_Entry_2017_v2020.csv")
    assert t.targets.shape == (90, 14) and t.targets.dtype == np.float32
    assert t.targets[0].tolist() == [0.0] * 13 + [1.0]  # Hernia only
    lines = (tmp_path / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    for i, line in enumerate(lines[1:]):
        labels = line.split(",")[1]
        assert t.targets[i].sum() == (0 if labels == "No Finding" else len(labels.split("|")))
    assert t.patients[:3] == ("1", "1", "1")


def test_data_entry_errors(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(",".join(HEADER) + "\nx.png,Cardiomegaly|Pneumothorx,0,1,1,M,PA,1,1,1,1\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017\.csv, line 2: unknown finding 'Pneumothorx'"):
        read_data_entry(path)
    path.write_text("Image,Labels\nx.png,Mass\n")
    with pytest.raises(DataError, match="expected NIH Data_Entry columns Image Index, Finding Labels, Patient ID"):
        read_data_entry(path)


def test_split_lists_in_all_published_formats(tmp_path):
    (tmp_path / "chexnet.txt").write_text(
        "00000001_000.png 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n00000002_000.png 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    )
    (tmp_path / "pefat.csv").write_text(",Image Index,Finding Labels\n4,00000003_000.png,Hernia\n")
    (tmp_path / "official.txt").write_text("00000001_000.png\n00000001_001.png\n")
    assert read_image_list(tmp_path / "chexnet.txt") == ["00000001_000.png", "00000002_000.png"]
    assert read_image_list(tmp_path / "pefat.csv") == ["00000003_000.png"]
    assert read_image_list(tmp_path / "official.txt") == ["00000001_000.png", "00000001_001.png"]


def test_labeled_draw_keeps_rare_findings_and_is_stratified():
    rng = np.random.default_rng(0)
    targets = (rng.random((5000, 4)) < np.array([0.3, 0.1, 0.02, 0.004])).astype(np.float32)
    lab, unl = draw_labeled_multilabel(targets, 0.05, seed=1)
    assert len(lab) == 250 and len(set(lab) | set(unl)) == 5000 and not set(lab) & set(unl)
    share = targets[lab].sum(0) / targets.sum(0)
    assert targets[lab, 3].sum() >= 1  # the rarest finding (~20 images) is present
    assert np.allclose(share[:3], 0.05, atol=0.02)
    assert np.array_equal(draw_labeled_multilabel(targets, 0.05, seed=1)[0], lab)


def test_labeled_draw_does_not_drag_extra_rare_positives_in():
    # 10 images with rare A and frequent B, 90 with B only, 100 with none; a 50 % draw wants 5 A and 50 B. A naive
    # greedy draw fills A with 5 A+B images, then fills B from all free B images, A+B included (about 2.4 more A).
    targets = np.zeros((200, 2), dtype=np.float32)
    targets[:10] = 1
    targets[10:100, 1] = 1
    for seed in range(20):
        lab, _ = draw_labeled_multilabel(targets, 0.5, seed=seed)
        assert len(lab) == 100 and targets[lab].sum(0).tolist() == [5, 50]


def test_synthetic_multilabel_splits_keep_each_findings_share():
    cfg = load_config(
        None, ["--data.dataset=synthetic_multilabel", "--data.synthetic_size=3000", "--data.image_size=8"]
    )
    data = prepare_data(cfg.data)
    total = data.targets.sum(0)
    for part, share in [("validation", 0.1), ("testing", 0.2)]:
        np.testing.assert_allclose(data.targets[data.parts[part]].sum(0), total * share, atol=1)
    labeled = data.targets[data.parts["labeled"]].sum(0)
    np.testing.assert_allclose(labeled, total * 0.7 * 0.2, atol=1)  # "spot" (6 %): 24 labeled, not 48


def test_synthetic_multilabel_contrast_scales_the_findings_only():
    plain, y = make_synthetic_multilabel(300, 16, seed=1, contrast=0.0)  # same draws, no finding drawn
    full, y1 = make_synthetic_multilabel(300, 16, seed=1)
    half, y2 = make_synthetic_multilabel(300, 16, seed=1, contrast=0.5)
    assert np.array_equal(y, y1) and np.array_equal(y, y2)
    none = y.sum(1) == 0
    assert np.array_equal(full[none], plain[none]) and np.array_equal(half[none], plain[none])
    dev = lambda imgs: np.abs(imgs[~none].astype(float) - plain[~none]).mean()  # noqa: E731
    assert 1.8 < dev(full) / dev(half) < 2.2  # 2 up to clipping and rounding to uint8


def test_nih_layout_patient_split_and_split_files_round_trip(tmp_path):
    root = write_nih(tmp_path / "nih")
    data = prepare_data(nih_config(root, tmp_path, "--data.labeled=0.3").data)
    assert data.task == "multi" and data.targets.shape[1] == 14 and data.images.shape[1:] == (16, 16, 3)
    patient = lambda i: data.names[i][:8]  # noqa: E731
    parts = {k: {patient(i) for i in v} for k, v in data.parts.items()}
    train = parts["labeled"] | parts["unlabeled"]
    assert (
        not train & parts["validation"] and not train & parts["testing"] and not parts["validation"] & parts["testing"]
    )
    assert len(parts["validation"]) == 5  # 20% of the 25 train_val patients
    hernia = CXR14_FINDINGS.index("Hernia")
    assert (
        data.targets[data.parts["labeled"], hernia].sum() >= 1
        or data.targets[data.parts["unlabeled"], hernia].sum() == 0
    )
    data.write_splits(tmp_path / "splits")
    again = prepare_data(nih_config(root, tmp_path, f"--data.splits={tmp_path / 'splits'}").data)
    for part in data.parts:
        assert sorted(again.names[i] for i in again.parts[part]) == sorted(data.names[i] for i in data.parts[part])
    assert np.array_equal(again.targets[again.parts["testing"]], data.targets[data.parts["testing"]])


def test_missing_nih_image_is_named(tmp_path):
    root = write_nih(tmp_path / "nih")
    next((root / "images_002" / "images").glob("*.png")).unlink()
    with pytest.raises(DataError, match=r"image '\d{8}_\d{3}\.png' not found anywhere under"):
        prepare_data(nih_config(root, tmp_path).data)


def test_medmnist_reader_single_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.random((n, 14)) < 0.2).astype(np.uint8)
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    splits = read_medmnist(tmp_path / "chestmnist.npz")
    assert splits["train"][0].shape == (40, 28, 28, 3) and splits["train"][1].shape == (40, 14)
    cfg = load_config(None, ["--data.dataset=medmnist", f"--data.labels={tmp_path / 'chestmnist.npz'}",
                             "--data.image_size=32", "--data.labeled=0.5"])  # fmt: skip
    data = prepare_data(cfg.data)
    assert data.task == "multi" and data.images.shape == (60, 32, 32, 3) and len(data.parts["labeled"]) == 20
    del arrays["val_labels"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(DataError, match=r"broken\.npz: missing 'val_images' / 'val_labels'"):
        read_medmnist(tmp_path / "broken.npz")


def test_medmnist_reader_rejects_bad_contents(tmp_path):
    def write(name, **change):
        arrays = {f"{s}_images": np.zeros((4, 28, 28), np.uint8) for s in ("train", "val", "test")}
        arrays |= {f"{s}_labels": np.array([[0], [1], [2], [1]]) for s in ("train", "val", "test")}
        np.savez(tmp_path / name, **(arrays | change))
        return tmp_path / name

    # a (N,) label vector is read as (N, 1): single-label class ids
    assert read_medmnist(write("flat.npz", train_labels=np.array([0, 1, 2, 1])))["train"][1].tolist() == [0, 1, 2, 1]
    cases = {
        "neg.npz": ({"train_labels": np.array([[0], [-1], [2], [1]])}, r"train_labels, row 1: expected a class id"),
        "frac.npz": ({"val_labels": np.array([[0], [1], [0.5], [1]])}, r"val_labels, row 2: expected a class id"),
        "multi.npz": ({"test_labels": np.array([[0, 1], [1, 1], [0, 2], [1, 0]])}, r"test_labels, row 2: expected 0"),
        "nan.npz": ({"test_labels": np.array([[0, 1], [np.nan, 1], [0, 0], [1, 0]])}, "test_labels, row 1: expected 0"),
        "float.npz": ({"train_images": np.ones((4, 28, 28), np.float32)}, r"train_images must be uint8 .* got float32"),
        "short.npz": ({"val_labels": np.array([[0], [1]])}, r"val: 4 images but 2 labels"),
        "text.npz": ({"val_labels": np.array([["a"], ["b"], ["c"], ["d"]])}, r"val_labels must be numbers .* got <U1"),
        "rgba.npz": ({"test_images": np.zeros((4, 28, 28, 4), np.uint8)}, r"test_images must be uint8 .*28, 4\)"),
    }  # fmt: skip
    for name, (change, message) in cases.items():
        with pytest.raises(DataError, match=message):
            read_medmnist(write(name, **change))
    (tmp_path / "labels.csv").write_text("image,label\na,0\n")  # not an .npz: an error, no offer to unpickle it
    with pytest.raises(DataError, match=r"labels\.csv is not a readable MedMNIST \.npz file \(ValueError\)"):
        read_medmnist(tmp_path / "labels.csv")
    good = write("good.npz")
    (tmp_path / "half.npz").write_bytes(good.read_bytes()[:200])  # a download cut short
    with pytest.raises(DataError, match=r"half\.npz is not a readable MedMNIST \.npz file \(BadZipFile\)"):
        read_medmnist(tmp_path / "half.npz")
    objects = write("objects.npz", train_images=np.array([None] * 4, dtype=object))  # pickled inside the .npz
    with pytest.raises(DataError, match=r"objects\.npz: cannot read train_images / train_labels \(ValueError\)"):
        read_medmnist(objects)
    # bool labels (a multi-label matrix saved as bool) are 0/1
    assert read_medmnist(write("bool.npz", test_labels=np.eye(4, 2, dtype=bool)))["test"][1].dtype == np.float32
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match="holds one array"):
        read_medmnist(tmp_path / "one.npy")


def test_real_pneumoniamnist_subset(shared_data):
    splits = read_medmnist(shared_data / "pneumoniamnist_subset" / "pneumoniamnist.npz")
    assert splits["val"][0].shape == (524, 28, 28, 3) and splits["test"][1].shape == (624,)
    assert set(np.unique(splits["train"][1])) == {0, 1}


def test_multilabel_capr_thresholds_lower_for_rare_slow_findings():
    rule = CAPRThreshold(num_classes=3, num_unlabeled=10, momentum=0.9, warmup_epochs=1, task="multi")
    for _ in range(30):  # finding 0: confident positives; finding 2: barely above 0.5 when predicted
        probs = torch.tensor([[0.97, 0.8, 0.55]] * 3 + [[0.02, 0.1, 0.1]] * 7)
        rule.update(probs, torch.arange(10))
    assert torch.allclose(rule.thresholds(0.5), torch.tensor([[0.05] * 3, [0.95] * 3]))  # (negative, positive)
    t = rule.thresholds(2.0)[1]
    assert t[0] == pytest.approx(0.95) and t[2] < t[1] < t[0] and (t >= 0.5).all()
    assert rule.thresholds(2.0)[0].tolist() == pytest.approx([0.05] * 3)  # the fixed negative threshold


def test_real_chestxray14_labels_and_patient_disjoint_splits(shared_data):
    labels = shared_data / "chestxray14" / "labels"
    entry = read_data_entry(labels / "Data_Entry_2017_v2020.csv")
    assert len(entry.images) == 112_120
    assert entry.targets[:, CXR14_FINDINGS.index("Hernia")].sum() == 227
    position = {im: i for i, im in enumerate(entry.images)}
    train = [position[n] for n in read_image_list(labels / "train_val_list.txt")]
    test = [position[n] for n in read_image_list(labels / "test_list.DERIVED.txt")]
    keep, val = split_by_patient(tuple(entry.patients[i] for i in train), 0.1, seed=0)
    patients = [{entry.patients[i] for i in idx} for idx in (np.array(train)[keep], np.array(train)[val], test)]
    assert not patients[0] & patients[1] and not patients[0] & patients[2] and not patients[1] & patients[2]
    assert len(train) + len(test) == 112_120
    chexnet = read_image_list(shared_data / "chestxray14" / "chexnet_split" / "val_list.txt")
    pefat = read_image_list(shared_data / "ssl_splits" / "chest_pefat" / "val.csv")
    assert len(chexnet) == 11_219 and len(pefat) == 6_292 and all(n in position for n in pefat)
    targets = entry.targets[train]  # a 20 % labeled draw keeps every finding's share (Hernia included)
    lab, _ = draw_labeled_multilabel(targets, 0.2, seed=0)
    np.testing.assert_allclose(targets[lab].sum(0) / targets.sum(0), 0.2, atol=0.002)


def test_real_88_xrays_smoke_train_evaluate_predict(shared_data, tmp_path, capsys):
    cxr = shared_data / "chestxray14"
    index = list(csv.DictReader(open(cxr / "images" / "images_index.csv")))
    names = [row["file"].split("/")[-1] for row in index]
    train = [n for n, row in zip(names, index, strict=True) if row["official_split"] == "train_val"]
    test = [n for n, row in zip(names, index, strict=True) if row["official_split"] == "test"]
    (tmp_path / "train.txt").write_text("\n".join(train))
    (tmp_path / "test.txt").write_text("\n".join(test))
    run = tmp_path / "run"
    args = ["train", f"--run_dir={run}", "--data.dataset=chestxray14", f"--data.images={cxr / 'images'}",
            f"--data.labels={cxr / 'labels' / 'Data_Entry_2017_v2020.csv'}",
            f"--data.train_list={tmp_path / 'train.txt'}",
            f"--data.test_list={tmp_path / 'test.txt'}", "--data.val_fraction=0.3", "--data.labeled=0.5",
            "--data.image_size=32", "--data.num_workers=0", "--data.batch_labeled=4", "--data.batch_unlabeled=8",
            f"--data.cache_dir={tmp_path / 'cache'}", "--train.epochs=1", "--train.steps_per_epoch=2",
            "--train.progress_bar=false", "--model.backbone=resnet10t"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert "threshold/Hernia" in metrics["testing/teacher"] and "standard/auc" in metrics["testing/teacher"]
    log = (run / "logs" / "metrics.csv").read_text()
    assert all(f"{k}/Hernia" in log for k in ("threshold", "accept_rate", "pl_precision", "neg_rate", "neg_missed"))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "validation", "testing"]) == 0
    assert "mean AUC" in capsys.readouterr().out
    assert main(["predict", str(run), "--images", str(cxr / "images" / "256"), "--out", str(tmp_path / "p.csv")]) == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "image," + ",".join(CXR14_FINDINGS) and len(rows) == 1 + 62
