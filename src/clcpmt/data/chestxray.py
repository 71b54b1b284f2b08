"""ChestX-ray14 (NIH) and MedMNIST readers, patient-level validation split, per-finding labeled draw (method.md §5)."""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np

from .readers import IMAGE_EXTENSIONS, DataError, LabelTable, _rows

CXR14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip


def read_data_entry(path: str | Path, findings: tuple[str, ...] = CXR14_FINDINGS) -> LabelTable:
    """NIH `Data_Entry_2017[_v2020].csv`: multi-hot targets (N, 14) from `|`-separated `Finding Labels`.

    "No Finding" is the all-zero target; patients come from `Patient ID`.
    """
    path = Path(path)
    header, rows = _rows(path)
    needed = ("Image Index", "Finding Labels", "Patient ID")
    if not all(h in header for h in needed):
        raise DataError(f"{path}: expected NIH Data_Entry columns {', '.join(needed)}; got {','.join(header)}")
    i_img, i_lab, i_pat = (header.index(h) for h in needed)
    lookup = {f.lower(): k for k, f in enumerate(findings)}
    targets = np.zeros((len(rows), len(findings)), dtype=np.float32)
    images, patients, lines = [], [], []
    for r, (n, row) in enumerate(rows):
        for name in row[i_lab].split("|"):
            name = name.strip()
            if name == "No Finding":
                continue
            if name.lower() not in lookup:
                raise DataError(
                    f"{path}, line {n}: unknown finding '{name}'; expected No Finding or {', '.join(findings)}"
                )
            targets[r, lookup[name.lower()]] = 1.0
        images.append(row[i_img].strip())
        patients.append(row[i_pat].strip())
        lines.append(n)
    return LabelTable(tuple(images), targets, tuple(findings), str(path), tuple(lines), tuple(patients))


def read_image_list(path: str | Path) -> list[str]:
    """Image names of a split list: NIH/CheXNet `.txt` (first token per line) or a CSV with `Image Index` or `image`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split list {path} does not exist")
    if path.suffix.lower() != ".csv":
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    header, rows = _rows(path)
    column = next((c for c in ("Image Index", "image") if c in header), None)
    if column is None:
        raise DataError(f"{path}: expected an 'Image Index' or 'image' column; got {','.join(header)}")
    return [row[header.index(column)].strip() for _, row in rows]


def subset(table: LabelTable, names: list[str], source: str) -> LabelTable:
    """Rows of `table` for `names` (in that order); a name missing from the table is an error naming `source`."""
    position = {im: i for i, im in enumerate(table.images)}
    missing = [n for n in names if n not in position]
    if missing:
        raise DataError(f"{source}: {len(missing)} images are not in {table.source}, e.g. '{missing[0]}'")
    idx = np.array([position[n] for n in names], dtype=np.int64)
    patients = tuple(table.patients[i] for i in idx) if table.patients else None
    return LabelTable(tuple(names), table.targets[idx], table.classes, table.source,
                      tuple(table.lines[i] for i in idx), patients)  # fmt: skip


def split_by_patient(patients: tuple[str, ...], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions: about `fraction` of the patients, with all their images, are held out."""
    rng = np.random.default_rng(seed)
    unique = np.array(sorted(set(patients)))
    held = set(rng.permutation(unique)[: int(round(fraction * len(unique)))].tolist())
    mask = np.array([p in held for p in patients])
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def draw_labeled_multilabel(targets: np.ndarray, labeled: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labeled/unlabeled positions for multi-label targets (N, C), stratified per finding.

    Greedy iterative stratification (Sechidis et al. 2011), rarest finding first: each finding gets its share of
    labeled positives, so rare findings (Hernia) are present; "No Finding" images fill the rest of the count. When a
    finding is filled, images that also carry an already-filled finding come last, so frequent findings do not drag
    extra rare positives in (without this, a 70 % draw took 84 % of the synthetic set's rare "spot" images).
    Hand-written because it is 20 lines, where the library for it (iterative-stratification) is slow on 112k rows.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    count = int(round(labeled * n)) if labeled <= 1 else min(int(labeled), n)
    chosen = np.zeros(n, dtype=bool)
    pos = targets > 0.5
    size = pos.sum(0)
    want = np.where(size > 0, np.maximum(np.round(size * count / n).astype(int), 1), 0)  # each present finding >= 1
    for c in np.argsort(size, kind="stable"):  # rarest first
        have = (pos & chosen[:, None]).sum(0)
        free = np.flatnonzero(pos[:, c] & ~chosen)
        full = (have >= want) & (np.arange(pos.shape[1]) != c)
        order = np.lexsort((rng.random(len(free)), pos[free][:, full].sum(1)))  # fewest filled findings first
        take = min(want[c] - have[c], count - int(chosen.sum()))  # never more than `count` in all
        chosen[free[order[: max(take, 0)]]] = True
    rest = np.flatnonzero(~chosen)
    order = np.lexsort((rng.random(len(rest)), pos[rest].sum(1)))  # No Finding images first, random among equals
    chosen[rest[order[: max(count - int(chosen.sum()), 0)]]] = True
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def find_images(root: str | Path) -> dict[str, Path]:
    """Image files by name anywhere under `root` (NIH's images/ or images_001/images/ ... images_012/images/)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    found: dict[str, Path] = {}
    for folder, _, files in sorted(os.walk(root)):
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.setdefault(name, Path(folder) / name)
    return found


def resolve_names(table: LabelTable, found: dict[str, Path], root: str | Path) -> list[Path]:
    """Paths of the table's images; the first missing one is an error naming it and where it was looked for."""
    for name, line in zip(table.images, table.lines, strict=True):
        if name not in found:
            raise DataError(f"{table.source}, line {line}: image '{name}' not found anywhere under {root}")
    return [found[name] for name in table.images]


def write_multilabel_csv(path: str | Path, images: list[str], targets: np.ndarray, classes: tuple[str, ...]) -> None:
    """SRC-MT-style CSV for multi-label splits: `image,<finding>...` with 0/1 values (CRLF)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        for image, t in zip(images, targets, strict=True):
            writer.writerow([image, *(f"{float(v):.1f}" for v in t)])


def read_medmnist(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A MedMNIST `.npz` as {split: (images (N, H, W, 3) uint8, labels)}; labels (N,) single-label or (N, C) multi.

    Splits are the file's `train`, `val` and `test` (keys `<split>_images`, `<split>_labels`); grayscale sets are
    repeated to three channels. A set is multi-label when its label matrix has more than one column (ChestMNIST).
    Images must be uint8 (0-255), single labels class ids >= 0, multi labels 0 or 1: anything else is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MedMNIST file {path} does not exist")
    unreadable = (ValueError, OSError, EOFError, zipfile.BadZipFile)  # not an .npz, truncated, or pickled objects
    try:
        npz = np.load(path, allow_pickle=False)  # never unpickle a data file
    except unreadable as e:
        raise DataError(f"{path} is not a readable MedMNIST .npz file ({type(e).__name__}); expected numpy arrays "
                        "train_images, train_labels, val_images, ...") from None  # fmt: skip
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds one array, not a MedMNIST .npz with train/val/test images and labels")
    with npz:
        keys = set(npz.files)
        out = {}
        for split in ("train", "val", "test"):
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise DataError(
                    f"{path}: missing '{split}_images' / '{split}_labels'; keys are {', '.join(sorted(keys))}"
                )
            try:
                images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
            except unreadable as e:
                raise DataError(f"{path}: cannot read {split}_images / {split}_labels ({type(e).__name__})") from None
            out[split] = _medmnist_split(f"{path}: {split}", images, labels)
    return out


def _medmnist_split(where: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One split of a MedMNIST file, checked: (N, H, W, 3) uint8 images and (N,) int64 or (N, C) 0/1 labels."""
    if images.dtype != np.uint8 or not (images.ndim == 3 or images.ndim == 4 and images.shape[3] == 3):
        raise DataError(f"{where}_images must be uint8 (N, H, W) or (N, H, W, 3) with values 0-255; "
                        f"got {images.dtype} of shape {images.shape}")  # fmt: skip
    numeric = np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_
    if labels.ndim not in (1, 2) or not numeric:
        raise DataError(f"{where}_labels must be numbers of shape (N,), (N, 1) or (N, C); "
                        f"got {labels.dtype} of shape {labels.shape}")  # fmt: skip
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    labels = labels[:, None] if labels.ndim == 1 else labels
    if labels.shape[1] == 1:
        labels = labels[:, 0]
        bad = ~np.isfinite(labels) | (labels < 0) | (labels != np.round(labels))
        kind = "a class id (an integer >= 0)"
    else:
        bad = ~np.isin(labels, (0, 1)).all(1)
        kind = "0 or 1 for every finding"
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}_labels, row {i}: expected {kind}; got {labels[i].tolist()}")
    return images, labels.astype(np.int64) if labels.ndim == 1 else labels.astype(np.float32)
