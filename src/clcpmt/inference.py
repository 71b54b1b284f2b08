"""Evaluate and predict with a trained system: probabilities, both metric protocols, the ISIC submission CSV."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data.datamodule import EvalImages
from .data.readers import IMAGE_EXTENSIONS, DataError, cached_images, load_image, read_labels, resolve_images
from .data.sources import PreparedData, prepare_data
from .losses import probabilities
from .metrics import f1_thresholds, format_report, multilabel_metrics, srcmt_metrics, standard_metrics
from .module import SSLModule
from .system import load_system, run_checkpoint, run_data


def writable_folder(folder: Path, key: str) -> None:
    """Create `folder` if needed and check that a file can be written in it, before any long work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".clcpmt-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{key} {folder} is not writable ({e}); choose a folder you can write") from None


@torch.no_grad()
def predict_probs(module: SSLModule, images: np.ndarray, index: np.ndarray) -> dict[str, torch.Tensor]:
    """Teacher and student probabilities (N, C) for images[index]."""
    mean, std = module.normalization
    ds = EvalImages(images, np.zeros(len(images), dtype=np.int64), index, mean=mean, std=std)
    loader = DataLoader(ds, batch_size=128)
    out: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}
    for x, _ in loader:
        x = x.to(memory_format=module.memory_format)
        out["teacher"].append(module(x))
        out["student"].append(probabilities(module.student(x)[0], module.task))
    return {k: torch.cat(v) for k, v in out.items()}


def summarize(
    probs: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...], thresholds: torch.Tensor | None = None
) -> dict:
    """Both protocols as plain floats (percent), per-class values keyed by class name.

    Multi-label: F1 at `thresholds` (chosen on validation), srcmt binarised at 0.5.
    """
    multi = targets.ndim == 2
    s = multilabel_metrics(probs, targets, thresholds) if multi else standard_metrics(probs, targets)
    m = srcmt_metrics(probs, targets, 0.5) if multi else srcmt_metrics(probs, targets)
    out = {f"standard/{k}": 100 * float(s[k]) for k in ("auc", "bacc", "f1") if k in s}
    out |= {f"srcmt/{k}": 100 * float(v) for k, v in m.items()}
    for key in ("auc_c", "sens_c", "spec_c", "f1_c"):
        out |= {f"{key[:-2]}/{c}": 100 * float(v) for c, v in zip(classes, s[key], strict=True)}
    if multi:
        out |= {f"threshold/{c}": float(v) for c, v in zip(classes, s["thresholds"], strict=True)}
    else:
        out["confusion"] = s["confusion"].tolist()
    return out


def evaluate_parts(checkpoint: str | Path, data: PreparedData, parts: tuple[str, ...], verbose: bool = True) -> dict:
    """Evaluate teacher and student of `checkpoint` on parts of `data`; prints the reports.

    Multi-label F1 thresholds are chosen per finding on the validation part (when it is among `parts`, first).
    """
    module, _ = load_system(checkpoint)
    results: dict = {"checkpoint": str(checkpoint)}
    thresholds: dict[str, torch.Tensor | None] = {"teacher": None, "student": None}
    for part in sorted(parts, key=lambda p: p != "validation"):
        probs = predict_probs(module, data.images, data.parts[part])
        targets = torch.as_tensor(data.targets[data.parts[part]])
        for who, p in probs.items():
            if data.task == "multi" and part == "validation":
                thresholds[who] = f1_thresholds(p, targets)
            results[f"{part}/{who}"] = summarize(p, targets, data.classes, thresholds[who])
            if verbose:
                title = f"{part}, {who} ({Path(checkpoint).name})"
                print(format_report(p, targets, data.classes, title, thresholds[who]))
    return results


def evaluate_csv(checkpoint: str | Path, labels: str | Path, images: str | Path, verbose: bool = True) -> dict:
    """Evaluate on an external labeled set: a label CSV (any supported format) and its image folder."""
    module, cfg = load_system(checkpoint)
    table = read_labels(labels, tuple(module.classes), module.task)
    array = cached_images(resolve_images(table, images), cfg.data.image_size, cfg.data.center_crop, cfg.data.cache_dir)
    data = PreparedData(
        tuple(module.classes), list(table.images), array, table.targets, {"external": np.arange(len(table.images))},
        module.task,
    )  # fmt: skip
    return evaluate_parts(checkpoint, data, ("external",), verbose)


def list_images(source: str | Path) -> list[Path]:
    """Image files of a folder, one image file, or the paths listed one per line in a text file."""
    if not str(source):  # Path("") would be the current folder: never guess that
        raise DataError("--images is empty; give an image folder, an image, or a text file with one path per line")
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    elif source.is_file() and source.suffix.lower() in IMAGE_EXTENSIONS:
        paths = [source]  # one image
    elif source.is_file():
        try:
            text = source.read_text()
        except UnicodeDecodeError:
            raise DataError(f"{source} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a text file listing "
                            "images") from None  # fmt: skip
        paths = [Path(line.strip()) for line in text.splitlines() if line.strip()]
        for n, p in enumerate(paths, start=1):
            if not p.is_file():
                raise DataError(f"{source}, line {n}: image {p} does not exist")
    else:
        raise DataError(f"{source} is neither an image folder nor a text file listing images")
    if not paths:
        raise DataError(f"{source}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def check_out(out: Path, overwrite: bool) -> None:
    """An output file path (predict, export), checked before any decoding or inference."""
    if out.is_dir():
        raise DataError(f"--out {out} is a folder; give the path of the file to write")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    writable_folder(out.parent, "--out's folder")


def predict(
    checkpoint: str | Path, source: str | Path, out: str | Path, model: str = "teacher", overwrite: bool = False
) -> Path:
    """Write class probabilities in the ISIC submission format: image + one column per class."""
    out = Path(out)
    check_out(out, overwrite)
    paths = list_images(source)
    stems = Counter(p.stem for p in paths)
    if len(stems) != len(paths):
        dup = sorted(str(p) for p in paths if stems[p.stem] > 1)
        raise DataError(f"{source}: images with the same name would get the same id: {', '.join(dup[:4])}")
    # decoded in memory: predict writes nothing but --out (the training run's cache may not be writable here)
    if Path(checkpoint).suffix == ".onnx":  # an exported model: its preprocessing is in its metadata
        from .export import onnx_metadata, onnx_probabilities

        meta = onnx_metadata(checkpoint)
        classes = tuple(json.loads(meta["classes"]))
        size, crop = int(meta["input_size"]), meta["center_crop"] == "true"
        probs = onnx_probabilities(checkpoint, np.stack([load_image(p, size, crop) for p in paths]))
    else:
        module, cfg = load_system(checkpoint)
        classes = module.classes
        array = np.stack([load_image(p, cfg.data.image_size, cfg.data.center_crop) for p in paths])
        probs = predict_probs(module, array, np.arange(len(paths)))[model].numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = ["image," + ",".join(classes)]
    rows += [p.stem + "," + ",".join(f"{v:.6f}" for v in row) for p, row in zip(paths, probs.tolist(), strict=True)]
    out.write_text("\n".join(rows) + "\n")
    return out


def testing_outputs(
    run_dir: Path, checkpoint: str | Path | None = None, data: PreparedData | None = None
) -> dict[str, np.ndarray]:
    """Teacher probabilities (N, C), pooled features (N, D) and targets on the run's testing split.

    Kept in run_dir/test_outputs.npz, written once at the end of training from the checkpoint metrics.json names
    and the data the run trained on, so that the report only reads it. Without `checkpoint`/`data` (a run of an
    older release): its best checkpoint and its own split files.
    """
    cached = run_dir / "test_outputs.npz"
    if cached.is_file() and checkpoint is None:
        return dict(np.load(cached))
    module, cfg = load_system(checkpoint or run_checkpoint(str(run_dir), "best"), announce=False)
    if data is None:
        data = prepare_data(run_data(cfg, run_dir))
    index = data.parts["testing"]
    probs, feats = [], []
    with torch.no_grad():
        mean, std = module.normalization
        for x, _ in DataLoader(EvalImages(data.images, data.targets, index, mean=mean, std=std), batch_size=128):
            h = module.teacher.backbone(x.to(memory_format=module.memory_format))
            probs.append(module(x))
            feats.append(h.float())
    out = {"probs": torch.cat(probs).numpy(), "features": torch.cat(feats).numpy(), "targets": data.targets[index]}
    try:
        np.savez_compressed(cached, **out)
    except OSError:  # a read-only run folder: the report still works, it just recomputes next time
        pass
    return out
