import numpy as np
import pytest
from PIL import Image

from clcpmt.config import ISIC_CLASSES, load_config
from clcpmt.data.readers import DataError, cached_images, load_image, read_labels, resolve_images
from clcpmt.data.sources import prepare_data
from clcpmt.data.splits import draw_labeled, split_train_val_test
from clcpmt.data.synthetic import HAM_COUNTS, class_counts, make_synthetic, write_image_folder


def test_synthetic_is_deterministic_imbalanced_and_learnable_size():
    a, ya = make_synthetic(700, 24, seed=3)
    b, yb = make_synthetic(700, 24, seed=3)
    assert a.shape == (700, 24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(ya, yb)
    counts = np.bincount(ya, minlength=7)
    assert counts[1] == counts.max() and counts.min() >= 2  # NV is the head class
    assert class_counts(10015).tolist() == HAM_COUNTS.tolist()
    # class means differ: the classes carry signal
    means = np.stack([a[ya == c].mean(axis=(0, 1, 2)) for c in range(7)])
    assert np.linalg.norm(means[0] - means[1]) > 5


def test_read_one_hot_crlf_any_column_order(tmp_path):
    path = tmp_path / "split.csv"
    path.write_bytes(
        b"image,NV,MEL,BCC,AKIEC,BKL,DF,VASC\r\nISIC_1,0.0,1.0,0,0,0,0,0\r\nISIC_2,1.0,0.0,0,0,0,0,0\r\n\r\n"
    )
    t = read_labels(path, ISIC_CLASSES)
    assert t.images == ("ISIC_1", "ISIC_2") and t.targets.tolist() == [0, 1]


def test_read_ham_metadata_and_generic(tmp_path):
    ham = tmp_path / "HAM10000_metadata.csv"
    ham.write_text("lesion_id,image_id,dx,dx_type\nHAM_1,ISIC_1,bkl,histo\nHAM_2,ISIC_2,vasc,histo\n")
    assert read_labels(ham, ISIC_CLASSES).targets.tolist() == [4, 6]
    gen = tmp_path / "labels.csv"
    gen.write_text("image,label\na.png,cat\nb.png,dog\n")
    assert read_labels(gen, ("dog", "cat")).targets.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("img,MEL\nISIC_1,1\n", r"labels\.csv: unrecognised header img,MEL; expected 'image,MEL,NV"),
        (
            "image,label\nISIC_1,MEL\nISIC_2,MELANOMA\n",
            r"labels\.csv, line 3: unknown class 'MELANOMA'; expected one of MEL, NV, BCC, AKIEC, BKL, DF, VASC",
        ),
        ("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,1,1,0,0,0,0,0\n", r"line 2: a single-label row needs exactly one"),
        ("image,label\nISIC_1,MEL,extra\n", r"line 2: expected 2 columns"),
        ("image,label\nISIC_1,MEL\nI2,NV\nISIC_1,NV\n", r"line 4: image 'ISIC_1' is listed again \(first on line 2"),
        ("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.5,0,0,0,0,0,0\n", r"line 2: MEL must be 0 or 1; got '0.5'"),
        ("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,1,nan,0,0,0,0,0\n", r"line 2: NV must be 0 or 1; got 'nan'"),
        ("", r"file is empty"),
    ],
)
def test_bad_label_files_name_file_and_line(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_labels(path, ISIC_CLASSES)


def test_missing_label_file_and_missing_image(tmp_path):
    with pytest.raises(DataError, match="label file .*nope.csv does not exist"):
        read_labels(tmp_path / "nope.csv", ISIC_CLASSES)
    images, labels = make_synthetic(20, 16)
    csv = write_image_folder(tmp_path / "d", images, labels)
    table = read_labels(csv, ISIC_CLASSES)
    (tmp_path / "d" / "images" / f"{table.images[4]}.jpg").unlink()
    with pytest.raises(DataError, match=rf"labels\.csv, line 6: image '{table.images[4]}' not found in .*images"):
        resolve_images(table, tmp_path / "d" / "images")


def test_an_id_matching_two_files_is_an_error(tmp_path):
    images, labels = make_synthetic(6, 16)
    csv = write_image_folder(tmp_path / "d", images, labels)
    table = read_labels(csv, ISIC_CLASSES)
    folder = tmp_path / "d" / "images"
    (folder / f"{table.images[2]}.png").write_bytes((folder / f"{table.images[2]}.jpg").read_bytes())
    with pytest.raises(DataError, match=rf"line 4: image '{table.images[2]}' matches {table.images[2]}.jpg and "):
        resolve_images(table, folder)
    # an id given with its extension names one file: no ambiguity, even beside X.jpg.png
    (folder / f"{table.images[2]}.jpg.png").write_bytes((folder / f"{table.images[2]}.jpg").read_bytes())
    named = tmp_path / "named.csv"
    named.write_text(f"image,label\n{table.images[2]}.jpg,MEL\n")
    assert resolve_images(read_labels(named, ISIC_CLASSES), folder) == [folder / f"{table.images[2]}.jpg"]


def test_corrupt_jpeg_names_the_file(tmp_path):
    bad = tmp_path / "ISIC_0000001.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*ISIC_0000001\.jpg"):
        load_image(bad, 16, True)
    with pytest.raises(DataError, match=r"ISIC_0000001\.jpg"):
        cached_images([bad], 16, True, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").glob("*.npy") if ".partial" not in p.name]  # no half-written cache


def test_load_image_centre_crop_and_16bit(tmp_path):
    rgb = np.zeros((150, 200, 3), dtype=np.uint8)
    rgb[:, 25:175] = 255  # the centre 150x150 square is white; the side strips black
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png", 32, center_crop=True).min() == 255
    assert load_image(tmp_path / "a.png", 32, center_crop=False).min() == 0
    Image.fromarray(np.full((40, 40), 4000, dtype=np.uint16)).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 16, center_crop=False)
    assert x.shape == (16, 16, 3) and x.max() == round(4000 / 65535 * 255)  # the bit depth's range, not the max


def test_cache_is_reused(tmp_path):
    images, labels = make_synthetic(10, 16)
    table = read_labels(write_image_folder(tmp_path / "d", images, labels, fmt="png"), ISIC_CLASSES)
    paths = resolve_images(table, tmp_path / "d" / "images")
    a = cached_images(paths, 16, False, tmp_path / "cache")
    assert np.array_equal(np.asarray(a), images)  # PNG is lossless and no resize at the same size
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    cached_images(paths, 16, False, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_runs_started_together_fill_the_cache_once(tmp_path, monkeypatch):
    """Parallel benchmark runs on one dataset: a file lock makes one of them fill the cache while the others wait."""
    import threading
    import time

    import clcpmt.data.readers as readers

    images, labels = make_synthetic(50, 16)
    table = read_labels(write_image_folder(tmp_path / "d", images, labels, fmt="png"), ISIC_CLASSES)
    paths = resolve_images(table, tmp_path / "d" / "images")
    fills, real = [], readers._fill_cache

    def slow_fill(*args):
        fills.append(1)
        time.sleep(0.5)  # every run has seen "no cache yet" before the first fill ends
        real(*args)

    monkeypatch.setattr(readers, "_fill_cache", slow_fill)
    monkeypatch.setattr(readers, "Pool", _SerialPool)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(np.asarray(cached_images(paths, 16, False, tmp_path / "c"))))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fills) == 1 and len(results) == 3 and all(np.array_equal(r, images) for r in results)


def test_interrupted_cache_resumes(tmp_path, monkeypatch):
    import clcpmt.data.readers as readers

    images, labels = make_synthetic(2100, 8)
    table = read_labels(write_image_folder(tmp_path / "d", images, labels, fmt="png"), ISIC_CLASSES)
    paths = resolve_images(table, tmp_path / "d" / "images")
    calls = []
    real = readers._load_one

    def flaky(job):
        calls.append(job[0])
        if len(calls) == 2100 and not (tmp_path / "second").exists():
            raise KeyboardInterrupt  # killed near the end
        return real(job)

    monkeypatch.setattr(readers, "_load_one", flaky)
    monkeypatch.setattr(readers, "Pool", _SerialPool)
    with pytest.raises(KeyboardInterrupt):
        cached_images(paths, 8, False, tmp_path / "cache")
    (tmp_path / "second").touch()
    calls.clear()
    out = cached_images(paths, 8, False, tmp_path / "cache")
    assert len(calls) == 2100 - 2048  # only the images after the last saved progress are decoded again
    assert np.array_equal(np.asarray(out), images)


class _SerialPool:
    """Pool stand-in that runs in this process (so the test can monkeypatch the decoder)."""

    def __init__(self, n, initializer=None):
        pass

    def imap(self, fn, jobs, chunksize=1):
        return map(fn, jobs)

    def close(self):
        pass

    def terminate(self):
        pass

    def join(self):
        pass


def test_splits_are_stratified_and_reproducible():
    targets = np.repeat(np.arange(7), class_counts(2000))
    train, val, test = split_train_val_test(targets, seed=1)
    assert (len(train), len(val), len(test)) == (1400, 200, 400)
    assert len(set(train) | set(val) | set(test)) == 2000
    for idx, share in ((train, 0.7), (test, 0.2)):
        assert np.allclose(np.bincount(targets[idx], minlength=7) / np.bincount(targets), share, atol=0.06)
    lab, unl = draw_labeled(targets[train], 0.2, seed=1)
    assert len(lab) == 280 and len(unl) == 1120 and not set(lab) & set(unl)
    assert np.array_equal(draw_labeled(targets[train], 0.2, seed=1)[0], lab)
    assert not np.array_equal(draw_labeled(targets[train], 0.2, seed=2)[0], lab)
    assert len(draw_labeled(targets[train], 50, seed=1)[0]) == 50  # a count
    assert len(draw_labeled(targets[train], 1.0)[1]) == 0  # all labels


def _folder_config(tmp_path, n=140, **extra):
    images, labels = make_synthetic(n, 16, seed=4)
    csv = write_image_folder(tmp_path / "d", images, labels)
    over = [
        f"--data.images={tmp_path / 'd' / 'images'}",
        f"--data.labels={csv}",
        "--data.dataset=folder",
        "--data.image_size=16",
        f"--data.cache_dir={tmp_path / 'cache'}",
        "--data.labeled=0.3",
    ]
    return load_config(None, over + [f"--{k}={v}" for k, v in extra.items()])


def test_split_files_written_in_srcmt_format_and_read_back_exactly(tmp_path):
    cfg = _folder_config(tmp_path)
    data = prepare_data(cfg.data)
    data.write_splits(tmp_path / "splits")
    raw = (tmp_path / "splits" / "labeled.csv").read_bytes()
    assert raw.startswith(b"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\r\n")
    again = prepare_data(
        load_config(
            None,
            [
                f"--data.splits={tmp_path / 'splits'}",
                "--data.seed=99",
                *[
                    f"--data.{k}={v}"
                    for k, v in (
                        ("images", cfg.data.images),
                        ("labels", cfg.data.labels),
                        ("dataset", "folder"),
                        ("image_size", 16),
                        ("cache_dir", cfg.data.cache_dir),
                    )
                ],
            ],
        ).data
    )
    for part in ("labeled", "unlabeled", "validation", "testing"):
        assert sorted(again.names[i] for i in again.parts[part]) == sorted(data.names[i] for i in data.parts[part])


def test_split_that_disagrees_with_the_label_file(tmp_path):
    cfg = _folder_config(tmp_path)
    data = prepare_data(cfg.data)
    data.write_splits(tmp_path / "splits")
    lines = (tmp_path / "splits" / "validation.csv").read_text().splitlines()
    name = lines[1].split(",")[0]
    wrong = "0.0,0.0,0.0,0.0,0.0,0.0,1.0" if not lines[1].endswith("1.0") else "1.0,0.0,0.0,0.0,0.0,0.0,0.0"
    lines[1] = f"{name},{wrong}"
    (tmp_path / "splits" / "validation.csv").write_text("\n".join(lines) + "\n")
    bad = load_config(
        None,
        [
            f"--data.splits={tmp_path / 'splits'}",
            "--data.dataset=folder",
            f"--data.images={cfg.data.images}",
            f"--data.labels={cfg.data.labels}",
        ],
    )
    with pytest.raises(
        DataError, match=rf"validation\.csv, line 2: image '{name}' is labeled .* but .*labels\.csv says"
    ):
        prepare_data(bad.data)


def test_real_skin_racmt_split(shared_data):
    folder = shared_data / "ssl_splits" / "skin_racmt"
    sizes = {
        f: len(read_labels(folder / f"{f}.csv", ISIC_CLASSES).images) for f in ("training", "validation", "testing")
    }
    assert sizes == {"training": 7012, "validation": 1000, "testing": 2003}
    meta = read_labels(shared_data / "isic2018_ham10000" / "labels" / "HAM10000_metadata.csv", ISIC_CLASSES)
    assert len(meta.images) == 10015
    assert np.bincount(meta.targets).tolist() == [1113, 6705, 514, 327, 1099, 115, 142]
    table = read_labels(folder / "validation.csv", ISIC_CLASSES)
    assert len(resolve_images(table, shared_data / "isic2018_ham10000" / "images_200x150")) == 1000


def test_balance_weights_hand_computed():
    from clcpmt.data.datamodule import balance_weights

    # single-label, 3 images of class 0 and 1 of class 1: class-balanced gives each class half of the mass
    w = balance_weights(np.array([0, 0, 0, 1]), 1.0)
    np.testing.assert_allclose(w, [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(balance_weights(np.array([0, 0, 0, 1]), 0.0), [0.25] * 4)  # power 0 = uniform
    w = balance_weights(np.array([0, 0, 0, 0, 1]), 0.5)  # square root: 4^-0.5 = 0.5, 1^-0.5 = 1 -> 0.5*4 + 1 = 3
    np.testing.assert_allclose(w, [0.5 / 3] * 4 + [1 / 3])
    # multi-label: finding A in 3 images, B in 1, one "No Finding" image; the rarest finding of an image decides
    t = np.array([[1, 0], [1, 0], [1, 1], [0, 0]], dtype=np.float32)
    raw = np.array([1 / 3, 1 / 3, 1.0, 1.0])  # A: 1/3; A+B: max(1/3, 1/1); No Finding group of 1: 1
    np.testing.assert_allclose(balance_weights(t, 1.0), raw / raw.sum())


def test_balanced_sampler_draws_rare_classes_often_and_is_reproducible():
    from clcpmt.data.datamodule import EpochSampler, balance_weights

    targets = np.array([0] * 90 + [1] * 10)
    s = EpochSampler(100, 20_000, seed=3, weights=balance_weights(targets, 1.0))
    s.set_epoch(2)
    index = np.array([i for i, _ in s])
    assert abs((targets[index] == 1).mean() - 0.5) < 0.02  # uniform sampling would give 0.10
    assert list(s) == list(s)  # a pure function of (seed, epoch): a resumed run draws the same batches
    s.set_epoch(3)
    assert np.array([i for i, _ in s]).tolist() != index.tolist()
    uniform = np.array([i for i, _ in EpochSampler(100, 20_000, seed=3)])
    assert abs((targets[uniform] == 1).mean() - 0.1) < 1e-9  # permutations: exactly the data's proportion


def test_labeled_balance_range_is_checked():
    from clcpmt.config import ConfigError

    with pytest.raises(ConfigError, match="data.labeled_balance"):
        load_config(None, ["--data.labeled_balance=2"])
