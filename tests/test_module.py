"""The Lightning system: the teacher's mode in a real `fit`, and the rule that only the EMA writes its buffers."""

import pytest
import torch

from clcpmt import system
from clcpmt.config import load_config
from clcpmt.model import ema_update
from clcpmt.module import SSLModule, set_teacher_mode
from clcpmt.runner import train
from test_train import tiny


def _bn_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def _buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}


class Probe(SSLModule):
    """Checks, at every training step of a real fit, the teacher's mode and that its buffers move only by the EMA."""

    records: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        before = _buffers(self.teacher)
        loss = super().training_step(batch, batch_idx)
        after = _buffers(self.teacher)
        Probe.records.append(
            {
                "epoch": self.current_epoch,
                "teacher_training": self.teacher.training,
                "bn_training": {m.training for m in _bn_layers(self.teacher)},
                "forward_kept_buffers": all(torch.equal(before[k], after[k]) for k in before),
            }
        )
        return loss

    def on_train_batch_end(self, outputs: object, batch: dict, batch_idx: int) -> None:
        alpha = min(1.0 - 1.0 / self.global_step, self.hparams.ema_decay)  # ema_update's warm start, by hand
        expected = {}
        for (k, t), s in zip(_buffers(self.teacher).items(), self.student.buffers(), strict=True):
            expected[k] = torch.lerp(t, s, 1.0 - alpha) if t.dtype.is_floating_point else s.clone()
        super().on_train_batch_end(outputs, batch, batch_idx)
        Probe.records[-1]["ema_only"] = all(torch.allclose(expected[k], v) for k, v in _buffers(self.teacher).items())


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_teacher_mode_holds_in_a_real_fit_and_only_the_ema_writes_its_buffers(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(system, "SSLModule", Probe)
    Probe.records = []
    cfg = load_config(None, tiny(tmp_path, **{"method.teacher_bn": mode, "train.steps_per_epoch": 4}))
    train(cfg)
    assert {r["epoch"] for r in Probe.records} == {0, 1}  # the second epoch runs after a validation loop
    for r in Probe.records:
        assert r["teacher_training"] is False, r  # dropout and the rest: eval mode in both options
        assert r["bn_training"] == {mode == "batch"}, r
        assert r["forward_kept_buffers"], r
        assert r["ema_only"], r


def test_batch_mode_normalises_with_the_batch_and_ema_mode_with_the_running_statistics():
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(4.0)
    net = torch.nn.Sequential(bn)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    set_teacher_mode(net, "batch")
    batch_out = net(x)
    mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    expected = (x - mean[None, :, None, None]) / (var[None, :, None, None] + bn.eps).sqrt()
    assert torch.allclose(batch_out, expected, atol=1e-5)
    assert torch.equal(bn.running_mean, torch.full((3,), 5.0)) and int(bn.num_batches_tracked) == 0
    set_teacher_mode(net, "ema")
    assert torch.allclose(net(x), (x - 5.0) / (4.0 + bn.eps) ** 0.5, atol=1e-5)
    net.eval()  # validation: EMA statistics whatever the training-step option
    set_teacher_mode(net, "batch")
    net.eval()
    assert torch.allclose(net(x), (x - 5.0) / (4.0 + bn.eps) ** 0.5, atol=1e-5)


def test_ema_update_is_what_the_probe_expects():
    """The probe's hand EMA matches model.ema_update (so the fit test checks the real rule)."""
    a, b = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    b.running_mean.fill_(1.0)
    ema_update(a, b, 0.99, 3)  # alpha = min(1 - 1/4, 0.99) = 0.75
    assert torch.allclose(a.running_mean, torch.full((2,), 0.25))
