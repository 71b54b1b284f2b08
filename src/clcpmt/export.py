"""Ship a model: ONNX export with its preprocessing in the file, ONNX inference, and a model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .config import ISIC_CLASSES, CheckpointError, Config
from .losses import probabilities
from .module import SSLModule
from .version import __version__


class Probabilities(torch.nn.Module):
    """The exported graph: normalised images (N, 3, S, S) -> class probabilities (N, C) (softmax or sigmoid)."""

    def __init__(self, net: torch.nn.Module, task: str) -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(images)[0], self.task)


def export_onnx(module: SSLModule, cfg: Config, out: str | Path, model: str = "teacher", source: str = "") -> Path:
    """Write `model` (teacher or student) of a trained system as ONNX with a dynamic batch; the preprocessing a
    caller must apply (size, centre crop, mean/std), the classes and the task travel in the file's metadata."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net = Probabilities(module.teacher if model == "teacher" else module.student, module.task).eval()
    size = cfg.data.image_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(net, (example,), str(out), input_names=["images"], output_names=["probabilities"],
                      dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False)  # fmt: skip
    proto = onnx.load(str(out))
    meta = {
        "clcpmt_version": __version__,
        "model": model,
        "task": module.task,
        "classes": json.dumps(list(module.classes)),
        "input_size": str(size),
        "center_crop": str(cfg.data.center_crop).lower(),
        "mean": json.dumps(list(module.normalization[0])),
        "std": json.dumps(list(module.normalization[1])),
        "input": "RGB, square centre crop if center_crop, resized to input_size (bilinear), /255, minus mean, over std",
        "method": cfg.method.name,
        "backbone": cfg.model.backbone,
        "checkpoint": source,
    }
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    return out


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata clcpmt wrote into an exported file (errors name the file when it is not one)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(f"{path}: reading ONNX files needs onnxruntime (pip install onnxruntime)") from None

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf types
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if not {"classes", "input_size", "center_crop", "mean", "std"} <= set(meta):
        raise CheckpointError(f"{path} was not exported by `clcpmt export` (no classes in its metadata)")
    return meta


def onnx_session(path: str | Path) -> object:
    """An onnxruntime inference session of an exported model, on the CPU."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_probabilities(path: str | Path, images: np.ndarray, batch: int = 64, session: object = None) -> np.ndarray:
    """Probabilities (N, C) of an exported model for (N, S, S, 3) uint8 images already cropped and resized.
    session: onnx_session(path), to reuse over calls (making one loads the whole graph)."""
    meta = onnx_metadata(path)
    session = onnx_session(path) if session is None else session
    mean = np.asarray(json.loads(meta["mean"]), np.float32)[None, :, None, None]
    std = np.asarray(json.loads(meta["std"]), np.float32)[None, :, None, None]
    out = []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        out.append(session.run(None, {"images": (x - mean) / std})[0])
    return np.concatenate(out)


def model_card(run_dir: Path, cfg: Config, export: Path | None = None) -> str:
    """MODEL_CARD.md text for a finished run (and its export): what it is, on what, how good, and its limits."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    d, m = cfg.data, cfg.method
    norm = f"mean {list(cfg.model.mean)}, std {list(cfg.model.std)}"
    lines = [f"# Model card: {m.name} on {d.dataset}", ""]
    if export is not None:
        crop = "on" if d.center_crop else "off"
        lines += [f"File: `{export.name}` (ONNX, exported by clcpmt {__version__}; input: RGB, square centre crop "
                  f"{crop}, {d.image_size}×{d.image_size}, /255, {norm}; output: class probabilities). "
                  f"Run folder: `{run_dir}`.", ""]  # fmt: skip
    counts = _labeled_counts(run_dir)
    towards = "the labeled class prior" if m.debias_target == "labeled" else "a uniform class distribution"
    debias = f"; pseudo-labels debiased towards {towards}, λ {m.debias} (an extension)" if m.debias else ""
    lines += [
        "## Data",
        f"- Dataset `{d.dataset}`; images `{d.images or '(generated)'}`; labels `{d.labels or '(generated)'}`.",
        f"- Splits: `{run_dir / 'splits'}` (SRC-MT CSV format); labeled fraction or count {d.labeled}; split seed "
        f"{d.seed}." + (f" Labeled images per class: {counts}." if counts else ""),
        "",
        "## Training",
        f"- Method `{m.name}` (teacher = EMA of the student, decay {m.ema_decay}, teacher BatchNorm `{m.teacher_bn}`); "
        f"λ_mt {m.lambda_mt}, λ_sde {m.lambda_sde}, λ_pl {m.lambda_pl}, τ {m.tau}, τ_min {m.tau_min}{debias}.",
        f"- Backbone `{cfg.model.backbone}` from timm, weights: `{cfg.model.pretrained}` (none = random init)"
        + (f": {metrics['weights']}" if metrics.get("weights") else "")
        + f"; input normalised with {norm}; {cfg.train.epochs} epochs,"
        f" optimiser {cfg.train.optimizer} lr {cfg.train.lr}, seed {cfg.train.seed}.",
        f"- Command: `clcpmt train --config {run_dir / 'config.yaml'}` (the resolved config of this run).",
        "",
        "## Results (teacher, checkpoint of the best validation epoch)",
        "| split | macro AUC | balanced accuracy | macro F1 |",
        "|---|---|---|---|",
    ]
    for part in ("validation", "testing"):
        r = metrics.get(f"{part}/teacher", {})
        cells = [f"{r[k]:.2f}" if k in r else "-" for k in ("standard/auc", "standard/bacc", "standard/f1")]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", f"From `{metrics_file}` (written by `clcpmt train`; `clcpmt evaluate {run_dir}` recomputes it).", ""]
    recall = metrics.get("testing/teacher", {})
    weak = sorted((v, k.split("/", 1)[1]) for k, v in recall.items() if k.startswith("sens/") and v == v)[:3]
    lines += [
        "## Intended use and limitations",
        "- Research on semi-supervised learning with few labels and imbalanced classes. **Not for diagnosis** and not "
        "validated on any clinical population.",
        f"- Trained on one data source at {cfg.data.image_size} px; expect lower accuracy on other devices, sites or "
        "populations"
        + (
            " (the ISIC2018 official test set is one such shift)."
            if cfg.data.dataset == "folder" and set(cfg.data.classes or ISIC_CLASSES) == set(ISIC_CLASSES)
            else "."
        ),
    ]
    if weak:
        lines.append("- Lowest testing recall (tail classes): " + ", ".join(f"{n} {v:.1f} %" for v, n in weak) + ".")
    return "\n".join(lines) + "\n"


def _labeled_counts(run_dir: Path) -> str:
    path = run_dir / "splits" / "labeled.csv"
    if not path.is_file():
        return ""
    header, *rows = [line.split(",") for line in path.read_text().splitlines() if line]
    sums = np.asarray([[float(v) for v in r[1:]] for r in rows]).sum(0) if rows else []
    return ", ".join(f"{c} {int(n)}" for c, n in zip(header[1:], sums, strict=True))
