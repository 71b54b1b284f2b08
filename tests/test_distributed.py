"""Threshold statistics and SDE's memory bank under distributed training: two CPU processes (gloo) must agree with
each other and with one process that sees both batches."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clcpmt.losses import SDEBank
from clcpmt.thresholds import CAPRThreshold, FreeMatchThreshold


def _batches():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 16, 4, generator=g) * 3, dim=2)  # (rank, B, C)
    index = torch.arange(32).reshape(2, 16)
    return probs, index


def _rules():
    return {
        "confidence": CAPRThreshold(4, 32, momentum=0.5, warmup_epochs=0),
        "count": CAPRThreshold(4, 32, tau=0.6, warmup_epochs=0, status="count"),
        "freematch": FreeMatchThreshold(4, momentum=0.5),
    }


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    probs, index = _batches()
    for name, rule in _rules().items():
        rule.update(probs[rank], index[rank])
        out[(rank, name)] = rule.thresholds(1.0).clone()
    bank = SDEBank(size=24, dim=4, num_classes=4)
    bank.push(probs[rank], index[rank])  # any (B, D) rows and (B,) labels
    out[(rank, "bank")] = (bank.z.clone(), bank.labels.clone())
    dist.destroy_process_group()


def test_threshold_state_agrees_across_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    probs, index = _batches()
    for name, rule in _rules().items():
        rule.update(probs.reshape(32, 4), index.reshape(32))  # one process, both batches
        single = rule.thresholds(1.0)
        assert torch.allclose(out[(0, name)], out[(1, name)]), name
        assert torch.allclose(out[(0, name)], single, atol=1e-6), name
    bank = SDEBank(size=24, dim=4, num_classes=4)
    bank.push(probs.reshape(32, 4), index.reshape(32))  # rank 0's rows, then rank 1's; the last 24 kept
    for rank in (0, 1):
        assert torch.equal(out[(rank, "bank")][0], bank.z) and torch.equal(out[(rank, "bank")][1], bank.labels)


def test_a_whole_run_on_two_cpu_processes(tmp_path):
    """Lightning DDP end to end (gloo, 2 processes): both train, process 0 alone evaluates and reports."""
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "clcpmt.cli", "train", "--config", "demo", f"--run_dir={run_dir}"]
    cmd += ["--train.accelerator=cpu", "--train.devices=2", "--train.epochs=2", "--train.steps_per_epoch=2"]
    cmd += [
        "--data.synthetic_size=300",
        "--data.num_workers=0",
        "--method.warmup_epochs=0",
        "--train.progress_bar=false",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=500)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting with 2 processes" in res.stdout + res.stderr
    assert (res.stdout + res.stderr).count("run folder:") == 1  # process 0 alone evaluates
    assert (res.stdout + res.stderr).count("testing (teacher, best epoch") == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["testing/teacher"]["standard/auc"] <= 100.0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sigma = state["method.rule.status.sigma"]
    assert not torch.allclose(sigma, torch.full_like(sigma, 1 / 7))  # the CAPR status was updated under DDP
