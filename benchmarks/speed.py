"""Training-step throughput of a method on this machine: fp32 vs bf16 autocast, with and without channels_last.

    python benchmarks/speed.py --backbone resnet18 --size 64 --method mean_teacher --steps 15

Times the method's step + backward + optimiser step + EMA update on fixed random batches of SPEC's shape
(B_L = 12 labeled, B_U = 36 unlabeled); data loading is not included. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from clcpmt.losses import ema_update
from clcpmt.methods import Progress, SSLBatch, build_method
from clcpmt.model import create_student


def steps_per_second(backbone: str, size: int, method: str, steps: int, bf16: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    student, _ = create_student(backbone, num_classes=7)
    teacher, _ = create_student(backbone, num_classes=7)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student, teacher = student.to(memory_format=fmt), teacher.to(memory_format=fmt)
    rule = build_method(method, 7, num_unlabeled=1000)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)

    def img(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size).to(memory_format=fmt)

    batch = SSLBatch(img(12), img(12), torch.randint(0, 7, (12,)), img(36), img(36), torch.arange(36),
                     torch.randint(0, 7, (36,)))  # fmt: skip
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = rule.step(batch, student, teacher, Progress(i, 10.0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ema_update(teacher, student, 0.99, i)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--method", default="mean_teacher")
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()
    print(f"{a.method}, {a.backbone} at {a.size} px, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print("| precision | channels_last | steps/s |\n|---|---|---|")
    for bf16 in (False, True):
        for cl in (False, True):
            rate = steps_per_second(a.backbone, a.size, a.method, a.steps, bf16, cl)
            print(f"| {'bf16 autocast' if bf16 else 'fp32'} | {cl} | {rate:.2f} |")


if __name__ == "__main__":
    main()
