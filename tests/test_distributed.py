"""Threshold statistics under distributed training: two CPU processes (gloo) must agree with each other and with
one process that sees both batches."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
