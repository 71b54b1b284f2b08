"""Label readers (ISIC one-hot / SRC-MT split CSVs, HAM10000 metadata, image,label) and the pre-resized image cache."""

from __future__ import annotations

import csv
import fcntl
import hashlib
import os
import signal
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, line or image."""


@dataclass(frozen=True)
class LabelTable:
    """Image ids with their labels. targets: (N,) int64 class indices, or (N, C) float 0/1 for multi-label."""

    images: tuple[str, ...]
    targets: np.ndarray
    classes: tuple[str, ...]
    source: str
    lines: tuple[int, ...]  # line of each row in `source`, for error messages
    patients: tuple[str, ...] | None = None


def _rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:  # newline="" reads CRLF files (SRC-MT) as well
        rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: file is empty; expected a header row")
    return [h.strip() for h in rows[0][1]], rows[1:]


def _class_index(name: str, classes: tuple[str, ...], where: str) -> int:
    lookup = {c.upper(): i for i, c in enumerate(classes)}
    if name.strip().upper() not in lookup:
        raise DataError(f"{where}: unknown class '{name}'; expected one of {', '.join(classes)}")
    return lookup[name.strip().upper()]


def _one_hot_row(
    path: Path, line: int, row: list[str], cols: list[int], classes: tuple[str, ...], multi: bool
) -> int | list[float]:
    try:
        values = [float(row[j]) for j in cols]
    except (ValueError, IndexError):
        raise DataError(f"{path}, line {line}: expected {len(classes)} numbers for {', '.join(classes)}") from None
    for j, c, v in zip(cols, classes, values, strict=True):
        if v not in (0.0, 1.0):  # a soft, negative or NaN label would otherwise be rounded silently
            raise DataError(f"{path}, line {line}: {c} must be 0 or 1; got {row[j].strip()!r}")
    if multi:
        return values
    hits = [i for i, v in enumerate(values) if v == 1.0]
    if len(hits) != 1:
        raise DataError(f"{path}, line {line}: a single-label row needs exactly one class set to 1; got {values}")
    return hits[0]


def read_labels(path: str | Path, classes: tuple[str, ...], task: str = "single") -> LabelTable:
    """Read a label CSV, recognised by its header.

    Accepts the ISIC / SRC-MT one-hot format (`image,MEL,NV,...`, any column order), HAM10000's
    `HAM10000_metadata.csv` (`image_id`, `dx`), or a generic `image,label` file with class names.
    With task="multi" the one-hot format is read as a 0/1 matrix (N, C) (any number of ones per row).
    """
    path = Path(path)
    header, rows = _rows(path)
    images, targets, lines = [], [], []
    if "image_id" in header and "dx" in header:
        i_img, i_lab = header.index("image_id"), header.index("dx")
        parse = lambda n, r: _class_index(r[i_lab], classes, f"{path}, line {n}")  # noqa: E731
    elif "image" in header and "label" in header:
        i_img, i_lab = header.index("image"), header.index("label")
        parse = lambda n, r: _class_index(r[i_lab], classes, f"{path}, line {n}")  # noqa: E731
    elif "image" in header and all(c in header for c in classes):
        i_img, cols = header.index("image"), [header.index(c) for c in classes]
        parse = lambda n, r: _one_hot_row(path, n, r, cols, classes, task == "multi")  # noqa: E731
    else:
        raise DataError(
            f"{path}: unrecognised header {','.join(header)}; expected 'image,{','.join(classes)}' (ISIC one-hot), "
            "'image_id,dx,...' (HAM10000 metadata) or 'image,label'"
        )
    for n, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path}, line {n}: expected {len(header)} columns as in the header; got {len(row)}")
        images.append(row[i_img].strip())
        targets.append(parse(n, row))
        lines.append(n)
    if not images:
        raise DataError(f"{path}: no rows after the header; expected one row per image")
    if len(set(images)) != len(images):
        seen: dict[str, int] = {}
        for image, n in zip(images, lines, strict=True):
            if image in seen:
                raise DataError(f"{path}, line {n}: image '{image}' is listed again (first on line {seen[image]})")
            seen[image] = n
    dtype = np.float32 if task == "multi" else np.int64
    return LabelTable(tuple(images), np.asarray(targets, dtype=dtype), tuple(classes), str(path), tuple(lines))


def resolve_images(table: LabelTable, folder: str | Path) -> list[Path]:
    """Map each image id of `table` to a file in `folder` (id as given, or id + a known extension)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)
    by_stem: dict[str, list[str]] = {}
    for name in names:
        by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    by_stem |= {name: [name] for name in names}  # an id with its extension names exactly one file
    paths = []
    for image, line in zip(table.images, table.lines, strict=True):
        if image not in by_stem:
            raise DataError(
                f"{table.source}, line {line}: image '{image}' not found in {folder} "
                f"(looked for {image} with {', '.join(IMAGE_EXTENSIONS)})"
            )
        if len(by_stem[image]) > 1:  # X.jpg beside X.png: which one is the labeled image is not ours to guess
            raise DataError(f"{table.source}, line {line}: image '{image}' matches {' and '.join(by_stem[image])} "
                            f"in {folder}; keep one, or name the file with its extension")  # fmt: skip
        paths.append(folder / by_stem[image][0])
    return paths


def load_image(path: str | Path, size: int, center_crop: bool) -> np.ndarray:
    """Decode one image to (size, size, 3) uint8 RGB; square centre crop of the short side first if asked."""
    try:
        with Image.open(path) as img:
            img.load()
            img = to_rgb(img)
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot read image {path}: {e} (PIL's guard against decompression bombs); resize the file "
                        "or check where it came from") from None  # fmt: skip
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}; is the file complete and an image?") from None
    return crop_and_resize(img, size, center_crop)


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB; 16-bit grayscale (X-rays; PIL reads some as "I") scaled by the bit depth's
    range, not the image's own maximum, so that two copies of one X-ray stay equal."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32).clip(0, 65535)
        img = Image.fromarray(np.round(arr / 65535 * 255).astype(np.uint8))
    return img.convert("RGB")


def crop_and_resize(img: Image.Image, size: int, center_crop: bool) -> np.ndarray:
    """An RGB PIL image as (size, size, 3) uint8: square centre crop of the short side first if asked, bilinear."""
    if center_crop:
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _load_one(args: tuple[Path, int, bool]) -> np.ndarray:
    return load_image(*args)


def cached_images(paths: list[Path], size: int, center_crop: bool, cache_dir: str | Path = "") -> np.ndarray:
    """All `paths` decoded and resized once into a memory-mapped (N, size, size, 3) uint8 array.

    The cache file is keyed by the file list, sizes and modification times. It is filled in parallel with a progress
    bar into a `.partial.npy` file whose progress is saved every 2,048 images, so an interrupted caching of a large
    set (ChestX-ray14: 112,120 images, 3·size² bytes each) resumes; it is renamed into place when complete.
    """
    cache_dir = Path(cache_dir or Path.home() / ".cache" / "clcpmt")
    key = hashlib.sha1(f"{size}|{center_crop}".encode())
    for p in paths:
        st = p.stat()
        key.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    target = cache_dir / f"images_{size}px_{len(paths)}_{key.hexdigest()[:16]}.npy"
    if not target.exists():
        lock_path = target.with_suffix(".lock")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = open(lock_path, "w")  # runs started together fill the cache once
        except OSError as e:
            msg = f"cache folder {cache_dir} is not writable ({e}); set data.cache_dir to one that is"
            raise DataError(msg) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not target.exists():
                    _fill_cache(target, paths, size, center_crop)
            except DataError:  # a bad image fails every retry: keep no partial cache of it (a kill keeps it)
                for suffix in (".partial.npy", ".progress", ".progress.tmp"):
                    target.with_suffix(suffix).unlink(missing_ok=True)
                raise
            finally:
                lock_path.unlink(missing_ok=True)  # from now on the cache file itself (or the error) is the answer
    return np.load(target, mmap_mode="r")


def _worker_signals() -> None:
    """Pool workers die on SIGTERM and leave Ctrl-C to the parent.

    A forked worker inherits the parent's Python SIGTERM handler (bench's, Lightning's, a notebook's). A Python handler
    cannot run while the worker blocks in C on the task queue's lock, so `Pool.terminate` then waits forever on it:
    the fill hung at 0 % CPU. With the default action the kernel ends the worker at once.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fill_cache(target: Path, paths: list[Path], size: int, center_crop: bool) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial, progress = target.with_suffix(".partial.npy"), target.with_suffix(".progress")
    start = _saved_progress(progress) if partial.exists() else 0
    shape = (len(paths), size, size, 3)
    out = np.lib.format.open_memmap(partial, mode="r+" if start else "w+", dtype=np.uint8, shape=shape)
    jobs = [(p, size, center_crop) for p in paths[start:]]
    bar = tqdm(total=len(paths), initial=start, desc=f"caching images at {size} px", disable=len(paths) < 2000)
    pool = Pool(min(os.cpu_count() or 1, 8), initializer=_worker_signals)
    try:
        with bar:
            for i, arr in enumerate(pool.imap(_load_one, jobs, chunksize=64), start=start):
                out[i] = arr
                bar.update()
                if (i + 1) % 2048 == 0:
                    out.flush()
                    _save_progress(progress, i + 1)
        pool.close()  # workers finish and exit by themselves: no terminate on the path that succeeds
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    out.flush()
    del out
    os.replace(partial, target)
    progress.unlink(missing_ok=True)


def _save_progress(progress: Path, done: int) -> None:
    """Written atomically: a kill between truncating and writing must not leave an empty progress file."""
    tmp = progress.with_suffix(".progress.tmp")
    tmp.write_text(str(done))
    os.replace(tmp, progress)


def _saved_progress(progress: Path) -> int:
    """Images already in the partial cache file; 0 (start over) when the count is missing or unreadable."""
    try:
        return int(progress.read_text())
    except (OSError, ValueError):
        return 0
