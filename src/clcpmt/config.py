"""One config tree: frozen dataclasses <- YAML file <- `--section.key=value` on the command line.

Written by hand (about 100 lines) rather than with OmegaConf or jsonargparse because we want every error to name
the file, the full key, what was expected and a close match, and frozen dataclasses as the only result.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .recipes import METHODS

ISIC_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# data.dataset: each has a reader in data/sources.py (SOURCES). The file-based ones save the run's split files in
# its folder, and evaluation reads them back (run_data): exactly the images the run was trained against.
DATASETS = ("synthetic", "synthetic_multilabel", "folder", "chestxray14", "medmnist")
FILE_DATASETS = ("folder", "chestxray14")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names it."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and the last good checkpoint.

    The errors a user can act on live here, beside the config, so the CLI catches them without importing torch.
    """


@dataclass(frozen=True)
class Check:
    """What a config key's value must be beside its type: bounds, choices, distinct list entries, not empty.

    One declaration per key (`key(...)` below), walked by `check_keys`, so no key's check is written by hand or
    forgotten. Every float must also be finite.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    distinct: bool = False  # a list of distinct, non-empty names
    nonempty: bool = False  # a string that may not be ""
    hint: str = ""  # what a special value means, said in the message: "0: off"

    def bounds(self) -> str:
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else ""
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}" if high else ""

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value` ("must be ..."), or None."""
        hint = f" ({self.hint})" if self.hint else ""
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            did = f" (did you mean '{close[0]}'?)" if close else ""
            return f"must be one of {', '.join(self.choices)}; got '{value}'{did}"
        if self.nonempty and value == "":
            return "must not be empty"
        if self.distinct and (len(set(value)) != len(value) or "" in value):
            bad = sorted({v for v in value if value.count(v) > 1 or v == ""})
            return f"must be distinct, non-empty names; got {list(value)} (repeated or empty: {', '.join(bad)})"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number{' ' + self.bounds() if self.bounds() else ''}{hint}; got {value}"
        if isinstance(value, int | float) and not isinstance(value, bool) and not self._within(value):
            return f"must be {self.bounds()}{hint}; got {value}"
        return None

    def _within(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))  # fmt: skip


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def key(default: Any, **check: Any) -> Any:
    """A config key: its default and its `Check` (e.g. `key(0.95, ge=0, le=1)`)."""
    return field(default=default, metadata={"check": Check(**check)})


SEED = {"ge": 0, "le": 2**32 - 1}  # numpy's seed range


@dataclass(frozen=True)
class DataConfig:
    # the data: generated (synthetic, synthetic_multilabel), an image folder + label CSV, ChestX-ray14, MedMNIST
    dataset: str = key("synthetic", choices=DATASETS)
    images: str = ""  # image folder (folder, chestxray14: the NIH root with images/ or images_*/images/)
    labels: str = ""  # folder: ISIC one-hot CSV, HAM10000_metadata.csv or image,label; chestxray14: Data_Entry CSV;
    # medmnist: the .npz file
    splits: str = ""  # folder with SRC-MT CSVs (training/validation/testing[, labeled]); "" = draw them
    train_list: str = ""  # chestxray14: train_val_list.txt (or a CheXNet / PEFAT list or CSV)
    val_list: str = ""  # chestxray14: validation list; "" = hold out val_fraction of train_list's patients
    test_list: str = ""  # chestxray14: test_list.txt
    val_fraction: float = key(0.1, gt=0, lt=1)  # chestxray14: share of train_list's patients held out for validation
    classes: tuple[str, ...] = key((), distinct=True)  # () = the dataset's own (ISIC's 7, ChestX-ray14's 14
    # findings, MedMNIST's ids)
    labeled: float = 0.2  # fraction of the training split (<= 1; 1.0 = all labels) or a count (> 1)
    image_size: int = key(64, ge=8, le=2048)  # side of the square input in pixels
    center_crop: bool = True  # square centre crop of the short side before resizing (as the ISIC test images)
    cache_dir: str = ""  # pre-resized image cache; "" = ~/.cache/clcpmt
    batch_labeled: int = key(12, ge=1, le=8192)  # B_L, labeled images per step (per process)
    batch_unlabeled: int = key(36, ge=1, le=8192)  # B_U, unlabeled images per step (per process)
    labeled_balance: float = key(0.0, ge=0, le=1, hint="0 uniform, 1 balanced")  # labeled sampler: 0 uniform,
    # 1 class-balanced, 0.5 square-root (rare classes drawn more often so SDE's batch has their positives; method.md §3)
    num_workers: int = key(2, ge=0, le=256)  # DataLoader worker processes
    synthetic_size: int = key(2000, ge=100, le=200_000)  # images of the synthetic dataset
    synthetic_contrast: float = key(1.0, gt=0)  # synthetic_multilabel: strength of every finding (< 1: subtler)
    seed: int = key(0, **SEED)  # seed of the split and of the labeled draw


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = key("resnet18", nonempty=True)  # any timm model name
    pretrained: str = key("none", nonempty=True)  # none | imagenet | path to a weights file
    mean: tuple[float, ...] = ()  # per-channel (R, G, B) input mean; (): the weights' own, as std
    std: tuple[float, ...] = ()  # per-channel input std; (): the weights' own (timm's pretrained config: 0.5 for
    # EfficientNet-Lite), ImageNet's for random init
    proj_dim: int = key(128, ge=1, le=65536)  # output size of SDE's projection head
    drop_rate: float = key(0.0, ge=0, lt=1)  # dropout before the classifier


@dataclass(frozen=True)
class MethodConfig:
    name: str = "clcp_mt"  # one of recipes.METHODS (method.md); an unknown name is an error naming the closest
    ema_decay: float = key(0.99, ge=0, lt=1)  # alpha of the EMA teacher (warm start: min(alpha, 1 - 1/(t+1)))
    lambda_mt: float = key(1.0, ge=0)  # weight of L_mt, ramped by w(t)
    lambda_sde: float = key(0.1, ge=0)  # weight of L_sde (SupCon on the labeled views)
    lambda_pl: float = key(1.0, ge=0)  # weight of the pseudo-label loss (ramped for teacher pseudo-labels)
    lambda_fair: float = key(0.01, ge=0)  # freematch: weight of its self-adaptive fairness term (USB's default)
    rampup_epochs: float = -1.0  # T_r of the ramp-up w(t); -1: 30 % of train.epochs (method.md §3.5); 0: none
    sde_temperature: float = key(0.1, gt=0)  # SupCon temperature
    sde_bank: int = key(0, ge=0, le=1_000_000, hint="0: no memory bank")  # SDE's memory bank (mt_sde, clcp_mt):
    # the last N labeled views' projections as extra SupCon keys, so rare classes meet positives outside their batch
    tau: float = key(0.95, ge=0, le=1)  # upper (and FixMatch's fixed) confidence threshold
    tau_min: float = 0.5  # CAPR's lower bound, in [0, method.tau]
    tau_negative: float = key(0.95, ge=0.5, le=1, hint="negative when p <= 1 - it")  # multi-label FixMatch /
    # CAPR: negative pseudo-label when p <= 1 - it (1: none); FlexMatch and FreeMatch set their own per finding
    status: str = key("confidence", choices=("confidence", "count"))  # CAPR's learning status: mean confidence or count
    momentum: float = key(0.999, ge=0, lt=1)  # EMA momentum of the learning status
    warmup_epochs: float = key(5.0, ge=0)  # E_w: CAPR uses tau until then
    mt_on_labeled: bool = True  # L_mt also on the labeled images
    class_balance: str = key("none", choices=("none", "weights", "logit_adjust"))  # L_sup only, from the labeled
    # prior (method.md §3.1)
    balance_strength: float = key(1.0, ge=0)  # exponent of the weights / multiplier of the log-prior (0.5: sqrt)
    teacher_bn: str = key("ema", choices=("ema", "batch"))  # teacher's BatchNorm in training steps: ema (running
    # statistics = EMA of the student's) | batch (the batch's own, not tracked); evaluation always uses the EMA ones
    student_view: str = key("default", choices=("default", "strong", "weak"))  # teacher-based methods: default
    # (strong; weak for mean_teacher, mt_sde) | strong | weak; the FixMatch family always trains on the strong view
    debias: float = key(0.0, ge=0, hint="0: off")  # clcp_mt / mt_capr, single-label: pseudo-label from
    # softmax(log p_T - debias · log p_bar), p_bar the running mean of the teacher's probabilities (DebiasPL)
    debias_momentum: float = key(0.999, ge=0, lt=1)  # EMA momentum of p_bar
    debias_target: str = key("uniform", choices=("uniform", "labeled"))  # uniform (DebiasPL) | labeled:
    # softmax(log p_T - debias · log(p_bar / pi)), pi the labeled prior (debias = 1: ReMixMatch's alignment)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = key(30, ge=1)  # epochs of steps_per_epoch steps
    steps_per_epoch: int = key(0, ge=0)  # 0 = one pass over the unlabeled images per epoch
    lr: float = key(1e-4, gt=0)  # learning rate
    weight_decay: float = key(5e-4, ge=0)  # L2 penalty (adam) or decoupled decay (adamw)
    optimizer: str = key("adam", choices=("adam", "adamw"))  # adam (L2 penalty, the paper lineage) | adamw
    schedule: str = key("exponential", choices=("exponential", "cosine"))  # exponential: lr x lr_decay each epoch
    lr_decay: float = key(0.9, gt=0, le=1)  # exponential schedule's factor per epoch
    precision: str = key("32-true", choices=("32-true", "bf16-mixed", "16-mixed"))  # Lightning precision
    channels_last: bool = False  # NHWC memory format (faster for CNNs on CPU)
    seed: int = key(0, **SEED)  # seed of the initialisation, batches and augmentations
    monitor: str = key("val/auc", choices=("val/auc", "val/bacc", "val/f1"))  # picks the best checkpoint (never a
    # test metric)
    accelerator: str = key("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"))  # Lightning accelerator
    devices: str = "auto"  # auto | a count 1-1024 | device indices "0,1"; checked before the run folder is made
    progress_bar: bool = True  # one bar for the whole run


@dataclass(frozen=True)
class Config:
    run_dir: str = key("runs/default", nonempty=True)  # the run folder
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def check_keys(obj: Any, prefix: str = "") -> None:
    """Every declared `Check` of a config tree, in declaration order: one ConfigError naming the first bad key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value) and "check" not in f.metadata:
            raise ConfigError(f"{prefix}{f.name} must be a finite number; got {value}")
        elif "check" in f.metadata and (problem := f.metadata["check"].problem(value)):
            raise ConfigError(f"{prefix}{f.name} {problem}")


def _coerce(value: Any, kind: Any, key: str, where: str) -> Any:
    """Return `value` as type `kind` or raise ConfigError naming `key`."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: {key} must be a list; got {value!r}")
        return tuple(_coerce(v, typing.get_args(kind)[0], key, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping; got {value!r}")
        return dict(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str | int | float) and not isinstance(value, bool),
    }[kind]
    if not ok:
        raise ConfigError(f"{where}: {key} must be {kind.__name__}; got {value!r}")
    return kind(value)


def build_dataclass(cls: type, data: dict[str, Any], prefix: str, where: str) -> Any:
    """Instance of dataclass `cls` from nested `data`; unknown keys and bad types raise ConfigError naming `where`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        value, kind = data[name], hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {prefix}{name} must be a mapping of keys; got {value!r}")
            kwargs[name] = build_dataclass(kind, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(value, kind, prefix + name, where)
    return cls(**kwargs)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, with a syntax error as one ConfigError naming `where` and the line, not a traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `--a.b=1` / `--a.b 1` pairs into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --section.key=value; got '{arg}'")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args):
            key, text = arg[2:], args[i + 1]
            i += 2
        else:
            raise ConfigError(f"command line: {arg} has no value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = read_yaml(text, f"command line: --{key}={text}") if text != "" else ""
    return out


PACKAGED_CONFIGS = Path(__file__).parent / "configs"


def resolve_config(name: str | None) -> Path | None:
    """A config path, or the name of a packaged config (configs/: demo, isic2018_cpu, isic2018_cpu64, ...)."""
    if not name:
        return None
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{name.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    known = ", ".join(p.stem for p in sorted(PACKAGED_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {name} does not exist (packaged configs: {known})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- command-line overrides (the command line wins); then validate."""
    data: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = read_yaml(path.read_text(), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        build_dataclass(Config, data, "", str(path))  # file errors name the file
    cli = parse_overrides(overrides or [])
    cfg = build_dataclass(Config, _merge(data, cli), "", "command line" if cli else str(path or "defaults"))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Check values that types alone cannot: each key's declaration, then what involves several keys."""

    check_keys(cfg)
    name = cfg.method.name
    if name not in METHODS:
        close = difflib.get_close_matches(name, METHODS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"method.name must be one of {', '.join(METHODS)}; got '{name}'{hint}")
    _validate_method(cfg.method, [n for n, r in METHODS.items() if r.threshold and r.pl_source == "teacher"])
    d = cfg.data
    if not (0 < d.labeled <= 1 or (d.labeled > 1 and float(d.labeled).is_integer())):
        raise ConfigError(f"data.labeled must be a fraction in (0, 1] or a whole count of images > 1; got {d.labeled}")
    if d.dataset == "folder" and not (d.images and d.labels):
        raise ConfigError("data.dataset=folder needs data.images (an image folder) and data.labels (a CSV)")
    if d.dataset == "chestxray14" and not (d.images and d.labels and (d.splits or (d.train_list and d.test_list))):
        raise ConfigError("data.dataset=chestxray14 needs data.images, data.labels (Data_Entry_2017*.csv) and "
                          "data.train_list + data.test_list (or data.splits)")  # fmt: skip
    if d.dataset == "medmnist" and not d.labels:
        raise ConfigError("data.dataset=medmnist needs data.labels, the path of the MedMNIST .npz file")
    _validate_devices(cfg.train.devices)
    _validate_normalization(cfg.model)


def _validate_devices(devices: str) -> None:
    parts = devices.replace(" ", "").strip("[]").split(",")
    count = len(parts) == 1 and parts[0].isdigit() and 1 <= int(parts[0]) <= 1024  # more is a typo, not a node
    indices = len(parts) > 1 and all(p.isdigit() for p in parts) and len(set(parts)) == len(parts)
    if devices != "auto" and not count and not indices:
        raise ConfigError(
            f"train.devices must be auto, a count in [1, 1024] or distinct device indices (0,1); got '{devices}'"
        )


def _validate_normalization(m: ModelConfig) -> None:
    if len(m.mean) != len(m.std) or len(m.mean) not in (0, 3):  # finite: every float is (check_keys)
        raise ConfigError(f"model.mean and model.std must both be () (the weights' own) or 3 values (R, G, B); "
                          f"got mean {list(m.mean)}, std {list(m.std)}")  # fmt: skip
    if not all(math.isfinite(v) for v in m.mean) or not all(math.isfinite(v) and v > 0 for v in m.std):
        raise ConfigError(f"model.mean must be finite and model.std finite and > 0; got {list(m.mean)}, {list(m.std)}")


def rampup_epochs(cfg: Config) -> float:
    """method.rampup_epochs, with its default -1 resolved to 30 % of the schedule (method.md §3.5: 30 of 100 epochs)."""
    return cfg.method.rampup_epochs if cfg.method.rampup_epochs >= 0 else 0.3 * cfg.train.epochs


def _validate_method(m: MethodConfig, teacher_pl: list[str]) -> None:
    """teacher_pl: the methods that pseudo-label from the teacher (method.debias acts on their probabilities)."""
    if m.rampup_epochs < 0 and m.rampup_epochs != -1:
        raise ConfigError(f"method.rampup_epochs must be >= 0 (0: no ramp-up) or -1 (30 % of train.epochs); "
                          f"got {m.rampup_epochs}")  # fmt: skip
    if not 0.0 <= m.tau_min <= m.tau:
        raise ConfigError(f"method.tau_min must be a float in [0, method.tau={m.tau}]; got {m.tau_min}")
    if m.debias_target != "uniform" and m.debias == 0:
        raise ConfigError(f"method.debias_target={m.debias_target} acts only with method.debias > 0; got debias=0")
    if m.debias > 0 and m.name not in teacher_pl:
        raise ConfigError(f"method.debias is for the methods that pseudo-label from the teacher "
                          f"({', '.join(teacher_pl)}); got method.name={m.name}")  # fmt: skip


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""

    def plain(x: Any) -> Any:
        return [plain(v) for v in x] if isinstance(x, tuple | list) else x

    return {
        s: {k: plain(v) for k, v in d.items()} if isinstance(d, dict) else d for s, d in dataclasses.asdict(cfg).items()
    }


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (readable back by load_config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. stored in a checkpoint)."""
    return build_dataclass(Config, data, "", "checkpoint")


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A stored `to_dict` config with the keys added since it was written filled in with their defaults, so runs
    from before and after a new key compare equal; as stored when it no longer reads (a key since removed)."""
    try:
        return to_dict(config_from_dict(data))
    except ConfigError:
        return data


def _field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field of a config dataclass (and comment lines right below it), from its source."""
    import inspect

    out: dict[str, str] = {}
    name, before = "", ""
    for line in inspect.getsource(cls).splitlines()[1:]:
        code, _, comment = line.strip().partition("# ")
        if code and ":" in code and not code.startswith(("@", '"', "class ")):
            name = code.split(":")[0].strip()
            out[name], before = f"{before} {comment.strip()}".strip(), ""
        elif not code and comment and name:  # a comment line continuing the field above
            out[name] = f"{out[name]} {comment.strip()}".strip()
        elif not code and comment:  # above the first field: it belongs to that field
            before = f"{before} {comment.strip()}".strip()
    return out


def reference_table(cls: type, prefix: str = "", only: tuple[str, ...] = ()) -> list[str]:
    """Markdown rows of a dataclass's keys: key, type, default, allowed values (its `Check`), the comment beside it."""
    comments = _field_comments(cls)
    lines = ["key | type | default | allowed | meaning", "---|---|---|---|---"]
    for f in dataclasses.fields(cls):
        if only and f.name not in only:
            continue
        check = f.metadata.get("check", Check())
        allowed = " \\| ".join(check.choices) if check.choices else check.bounds()
        allowed += (", distinct names" if check.distinct else "") + (", not empty" if check.nonempty else "")
        allowed += f" ({check.hint})" if check.hint else ""  # the special value's meaning, once
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "" if default == "" else (str(list(default)) if isinstance(default, tuple) else str(default))
        kind = str(f.type).replace("|", "\\|")
        meaning = comments.get(f.name, "").replace("|", "\\|")
        lines.append(f"`{prefix}{f.name}` | {kind} | `{shown}` | {allowed.strip(', ')} | {meaning}")
    return lines


def config_reference() -> str:
    """The training config's part of docs/configuration.md: every key of every section, its type, default, allowed
    values and meaning, from the dataclasses above (so the reference cannot drift from the code)."""
    lines = ["# Configuration reference", "",
             "Generated from the code by "
             "`python -c \"from clcpmt.bench import reference; print(reference(), end='')\" > docs/configuration.md`; "
             "a test fails when it is out of date.", "",
             "Order: defaults, then the YAML file (`--config`), then the command line (`--section.key=value`), which "
             "wins. Unknown keys and bad values stop with one error naming the key."]  # fmt: skip
    lines += ["", "## (top)", "", *reference_table(Config, only=("run_dir",))]
    for f in dataclasses.fields(Config):
        if f.name != "run_dir":
            lines += ["", f"## {f.name}", "", *reference_table(type(getattr(Config(), f.name)), f"{f.name}.")]
    return "\n".join(lines) + "\n"
