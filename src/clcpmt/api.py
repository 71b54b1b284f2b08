"""The Python API, for notebooks and scripts: train a run, load a model, predict and evaluate.

    import clcpmt
    run = clcpmt.train("demo", run_dir="runs/nb", **{"train.epochs": 1})   # or train={"epochs": 1}
    model = clcpmt.load(run.run_dir)              # a run folder, a .ckpt or an exported .onnx
    probs = model.predict(["a.jpg", "b.jpg"])     # (N, C), the run's own preprocessing
    metrics = model.evaluate("labels.csv", "images/")

The command line does the same through the same functions (runner, inference); nothing here trains differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from .config import Config, ConfigError, load_config, resolve_config
from .data.readers import DataError, crop_and_resize, load_image, to_rgb
from .model import create_student

__all__ = ["Predictor", "Run", "create_student", "load", "run_config", "train"]


def _overrides(overrides: dict) -> list[str]:
    """{"train.epochs": 1} or {"train": {"epochs": 1}} as the command line's --section.key=value strings."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += _overrides({f"{key}.{k}": v for k, v in value.items()})
            continue
        if isinstance(value, (list, tuple)):
            text = yaml.safe_dump(list(value), default_flow_style=True).strip()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        out.append(f"--{key}={text}")
    return out


@dataclass(frozen=True)
class Run:
    """A finished run: its folder, its resolved config and its metrics.json (validation and testing, both models)."""

    run_dir: Path
    config: Config
    metrics: dict = field(repr=False)

    def load(self, checkpoint: str = "best", model: str = "teacher") -> Predictor:
        return load(self.run_dir, checkpoint, model)


def run_config(config: str | Path | None = None, run_dir: str | Path | None = None, resume: bool = False,
               overrides: Sequence[str] = ()) -> Config:  # fmt: skip
    """The resolved config of a run, as `train` and `clcpmt train` build it: the defaults, then `config` (a YAML file
    or a packaged config's name), then `overrides` (--section.key=value strings), then run_dir. resume: the killed
    run in run_dir, from its own config.yaml (the folder given wins over the run_dir saved in it)."""
    if resume:
        if run_dir is None:
            raise ConfigError("resume needs the run folder of the run to continue")
        config = Path(run_dir) / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"resume {run_dir}: no config.yaml there; is it a run folder?")
    elif config:
        config = resolve_config(str(config))
    cfg = load_config(config or None, list(overrides))
    # the folder as given (not an override string: YAML would read "007" as 7 and "runs/try #2" as runs/try)
    return cfg if run_dir is None else replace(cfg, run_dir=str(Path(run_dir)))


def train(config: str | Path | None = None, run_dir: str | Path | None = None, resume: bool = False,
          **overrides: object) -> Run:  # fmt: skip
    """Train one run, as `clcpmt train` does.

    config: a YAML file or a packaged config's name (demo, isic2018_cpu64, isic2018_pretrained, ...); None = the
    defaults. overrides: dotted keys (`**{"train.epochs": 1}`) or one dict per section (`train={"epochs": 1}`);
    unknown keys are errors, as on the command line. resume: continue the killed run in `run_dir`.
    """
    from .runner import train as train_run

    cfg = run_config(config, run_dir, resume, _overrides(overrides))
    folder = train_run(cfg, resume=resume)
    if folder is None:  # another process of a distributed run
        raise RuntimeError("this process is not rank 0 of a distributed run: rank 0 returns the run")
    return Run(folder, cfg, json.loads((folder / "metrics.json").read_text()))


ImageInput = str | Path | Image.Image | np.ndarray


class Predictor:
    """A trained model with its own preprocessing (image size, crop, normalisation), from a run folder, a
    checkpoint or an exported ONNX file. `classes` names the columns of `predict`."""

    def __init__(self, path: str | Path, checkpoint: str = "best", model: str = "teacher") -> None:
        from .system import load_system, run_checkpoint

        if model not in ("teacher", "student"):
            raise ConfigError(f"model must be teacher or student; got '{model}'")
        self.path, self.model = Path(path), model
        if self.path.suffix == ".onnx":
            from .export import onnx_metadata, onnx_session

            if model != "teacher":
                raise ConfigError(f"{self.path}: an exported ONNX file holds the teacher only; got model='{model}'")
            meta = onnx_metadata(self.path)
            self.session = onnx_session(self.path)
            self.classes = tuple(json.loads(meta["classes"]))
            self.image_size, self.center_crop = int(meta["input_size"]), meta["center_crop"] == "true"
            self.checkpoint, self.module = self.path, None
        else:
            self.checkpoint = run_checkpoint(str(self.path), checkpoint)
            self.module, cfg = load_system(self.checkpoint)
            self.classes = tuple(self.module.classes)
            self.image_size, self.center_crop = cfg.data.image_size, cfg.data.center_crop

    def __repr__(self) -> str:
        return f"Predictor({self.checkpoint}, {self.model}, {len(self.classes)} classes, {self.image_size} px)"

    def images(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """(N, S, S, 3) uint8 as the model was trained on: from a folder or list file, paths, PIL images, one
        (H, W, 3) or a batch (N, H, W, 3) of uint8 arrays."""
        from .inference import list_images

        if isinstance(images, (str, Path)):
            images = list_images(images)
        elif isinstance(images, (Image.Image, np.ndarray)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        ):
            images = [images]
        out = []
        for i, item in enumerate(images):
            if isinstance(item, (str, Path)):
                out.append(load_image(item, self.image_size, self.center_crop))
                continue
            if isinstance(item, np.ndarray):
                if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                    raise DataError(f"image {i}: expected a uint8 (H, W, 3) RGB array; got {item.dtype} {item.shape}")
                item = Image.fromarray(item)
            if not isinstance(item, Image.Image):
                raise DataError(f"image {i}: expected a path, a PIL image or a uint8 array; got {type(item).__name__}")
            out.append(crop_and_resize(to_rgb(item), self.image_size, self.center_crop))
        if not out:
            raise DataError("no images given")
        return np.stack(out)

    def predict(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Class probabilities (N, C), columns in `classes` order (softmax; sigmoid for multi-label)."""
        array = self.images(images)
        if self.module is None:
            from .export import onnx_probabilities

            return onnx_probabilities(self.checkpoint, array, session=self.session)
        from .inference import predict_probs

        return predict_probs(self.module, array, np.arange(len(array)))[self.model].numpy()

    def evaluate(self, labels: str | Path, images: str | Path) -> dict:
        """Both metric protocols (percent) of teacher and student on a labeled set: a label CSV (ISIC one-hot,
        HAM10000 metadata or image,label) and its image folder; keys "external/teacher", "external/student"."""
        if self.module is None:
            raise ConfigError(f"{self.path}: evaluate needs a run folder or checkpoint (an ONNX file has no student)")
        from .inference import evaluate_csv

        return evaluate_csv(self.checkpoint, labels, images, verbose=False)


def load(path: str | Path, checkpoint: str = "best", model: str = "teacher") -> Predictor:
    """A run folder (its best or last checkpoint), a .ckpt file or an exported .onnx file, ready to predict."""
    return Predictor(path, checkpoint, model)
