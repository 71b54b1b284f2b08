"""The student (SPEC §2): a timm backbone -> pooled feature h -> classifier logits and an L2-normalised projection z."""

from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ConfigError

log = logging.getLogger(__name__)


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

    stored = load_state_dict(str(path), weights_only=False)  # timm's reader: unwraps "state_dict", EMA, "module."
    state = net.state_dict()
    missing = [k for k, v in state.items() if k not in stored or stored[k].shape != v.shape]
    differ = [k for k, v in state.items() if k not in missing and not torch.equal(stored[k].to(v.dtype), v)]
    if missing or differ:
        bad = missing or differ
        raise ConfigError(f"model.pretrained: {path} does not hold {backbone}'s backbone: {len(bad)} of {len(state)} "
                         f"tensors {'missing or of another shape' if missing else 'not loaded'} "
                         f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''})")  # fmt: skip


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
        pretrained: "none" (random init), "imagenet" (timm's weights, needs the network or a warm cache),
            or a path to a local weights file (.pth / .safetensors) for that architecture.
        quiet: do not log the origin (a checkpoint's weights replace these at once; its loader says so).

    Returns:
        The student and a sentence saying where its backbone weights came from (log it; never fall back silently).
    """
    check_model(backbone, pretrained)
    kwargs = dict(num_classes=0, drop_rate=drop_rate, in_chans=in_chans)
    if pretrained == "none":
        net, source = timm.create_model(backbone, pretrained=False, **kwargs), "random init (model.pretrained=none)"
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
