"""The `clcpmt` command: train, evaluate, predict, export, report, bench, compare, audit, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from .config import (
    PACKAGED_CONFIGS,
    CheckpointError,
    Config,
    ConfigError,
    TrainingError,
    load_config,
    to_dict,
)
from .data.readers import DataError
from .version import __version__

EPILOG = """config overrides: any --section.key=value (or --section.key value) after the options, e.g.
  clcpmt train --config isic2018_cpu --method.name mean_teacher --data.labeled 0.1 --train.seed 1
the command line wins over the file; unknown keys are errors. Sections: data, model, method, train; run_dir."""


def quiet(cfg: Config) -> Config:
    """--quiet: warnings, errors and the final line only (for scripts)."""
    logging.getLogger().setLevel(logging.WARNING)
    return replace(cfg, train=replace(cfg.train, progress_bar=False))


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from .api import run_config
    from .bench import PARENT_ENV, stop_with_parent
    from .runner import train

    parent = os.environ.get(PARENT_ENV)
    if parent:  # started by `clcpmt bench`: stop when it does, however it is killed
        stop_with_parent(int(parent))
        os.environ[PARENT_ENV] = str(os.getpid())  # DDP's other processes are started by this one: stop with it
    cfg = run_config(args.config, args.resume, bool(args.resume), overrides)
    if args.quiet:
        cfg = quiet(cfg)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return
    run_dir = train(cfg, resume=bool(args.resume))
    if run_dir is not None:  # None: another process of a distributed run
        print(f"run folder: {run_dir}")


def cmd_evaluate(args: argparse.Namespace, overrides: list[str]) -> None:
    from .data.sources import prepare_data
    from .inference import evaluate_csv, evaluate_parts
    from .system import load_system, run_checkpoint, run_data

    if overrides:
        raise ConfigError(f"evaluate takes no config overrides; got {' '.join(overrides)}")
    ckpt = run_checkpoint(args.target, args.checkpoint)
    if args.labels or args.images:
        if not (args.labels and args.images):
            raise ConfigError("evaluate on an external set needs both --labels CSV and --images DIR")
        results = evaluate_csv(ckpt, args.labels, args.images)
    else:
        _, cfg = load_system(ckpt)
        run_dir = Path(args.target) if Path(args.target).is_dir() else ckpt.parent.parent
        results = evaluate_parts(ckpt, prepare_data(run_data(cfg, run_dir)), tuple(args.split))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


def cmd_predict(args: argparse.Namespace, overrides: list[str]) -> None:
    from .inference import predict
    from .system import run_checkpoint

    if overrides:
        raise ConfigError(f"predict takes no config overrides; got {' '.join(overrides)}")
    out = predict(run_checkpoint(args.target, args.checkpoint), args.images, args.out, args.model, args.overwrite)
    print(f"wrote {out}")


DEMO_MARK = ".clcpmt-demo"


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> None:
    from .export import export_onnx, model_card
    from .inference import check_out
    from .system import load_system, run_checkpoint

    if overrides:
        raise ConfigError(f"export takes no config overrides; got {' '.join(overrides)}")
    ckpt = run_checkpoint(args.target, args.checkpoint)
    out = Path(args.out)
    check_out(out, args.overwrite)
    module, cfg = load_system(ckpt)
    export_onnx(module, cfg, out, args.model, str(ckpt))
    run_dir = ckpt.parent.parent
    (out.parent / "MODEL_CARD.md").write_text(model_card(run_dir, cfg, out))
    print(f"wrote {out} and {out.parent / 'MODEL_CARD.md'}")


def cmd_report(args: argparse.Namespace, overrides: list[str]) -> None:
    from .report import write_report

    if overrides:
        raise ConfigError(f"report takes no config overrides; got {' '.join(overrides)}")
    from .inference import check_out
    from .runner import run_in_use

    check_out(Path(args.out), overwrite=True)  # a report replaces the previous one by design
    out = write_report(args.runs, args.out, args.baseline)
    for run in map(Path, args.runs):
        if pid := run_in_use(run):
            print(f"note: {run} is still training (process {pid}): its section shows the epochs logged so far")
        elif not (run / "metrics.json").is_file():
            print(f"note: {run} has not finished (no metrics.json): its section shows the epochs logged so far")
    print(f"wrote {out}")


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> None:
    """Train Mean Teacher and CLCP-MT on the synthetic data and print the comparison on its test split."""
    from .runner import train

    base = load_config(PACKAGED_CONFIGS / "demo.yaml", overrides)
    base = quiet(base) if args.quiet else base
    rows = []
    for method in ("mean_teacher", "clcp_mt"):
        cfg = replace(base, run_dir=str(Path(base.run_dir) / method), method=replace(base.method, name=method))
        folder = Path(cfg.run_dir)
        if folder.exists():  # a fresh run each time, but only over a folder an earlier demo made
            if not (folder / DEMO_MARK).is_file():
                raise FileExistsError(f"{folder} exists and was not made by `clcpmt demo`; it is left untouched. "
                                      "Pass another --run_dir, or remove it yourself")  # fmt: skip
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (folder / DEMO_MARK).write_text("made by clcpmt demo; the next demo replaces this folder\n")
        run_dir = train(cfg, fresh_folder_ok=True)
        if run_dir is None:  # another process of a distributed run
            continue
        m = json.loads((run_dir / "metrics.json").read_text())["testing/teacher"]
        rows.append((method, m["standard/auc"], m["standard/bacc"], m["standard/f1"], m["srcmt/f1"]))
    if not rows:
        return
    print("\nDemo on SYNTHETIC data (testing split, teacher, best epoch by validation macro AUC):")
    print(f"{'method':<14}{'macro AUC':>10}{'bal. acc':>10}{'macro F1':>10}{'srcmt F1':>10}")
    for name, *vals in rows:
        print(f"{name:<14}" + "".join(f"{v:>10.2f}" for v in vals))
    print(f"run folders: {base.run_dir}/mean_teacher, {base.run_dir}/clcp_mt (chance balanced accuracy: 14.29)")


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> None:
    from .bench import bench

    if overrides:
        raise ConfigError(f"bench takes no config overrides (put them in the grid file); got {' '.join(overrides)}")
    out = bench(args.grid, only_report=args.report, jobs=args.jobs)
    print((out / "results.md").read_text())
    print(f"results: {out / 'results.csv'}, {out / 'results.md'}")


def cmd_compare(args: argparse.Namespace, overrides: list[str]) -> None:
    from .compare import pair, per_run, read_results, tables

    if overrides:
        raise ConfigError(f"compare takes no config overrides; got {' '.join(overrides)}")
    if args.pair and args.runs:
        raise ConfigError("compare: --pair and --runs are two different tables; ask for one at a time")
    if args.runs:
        print(per_run(read_results(args.results, args.metric)))
    elif args.pair:
        print(pair(args.results, *args.pair, args.metric, args.labeled))
    else:
        print(tables(args.results, args.metric, args.versus, args.ceiling))


def cmd_audit(args: argparse.Namespace, overrides: list[str]) -> None:
    from .audit import audit_table

    if overrides:
        raise ConfigError(f"audit takes no config overrides; got {' '.join(overrides)}")
    print(audit_table(args.runs, args.low))


def _model_choice(p: argparse.ArgumentParser) -> None:
    """The options predict and export share: which checkpoint, which model, and whether --out may be replaced."""
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--model", default="teacher", choices=("teacher", "student"))
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clcpmt", description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"clcpmt {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "train",
        help="train a method (config file + overrides)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", help="YAML file or packaged config name (demo, isic2018_cpu, ...)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines: warnings and errors only")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="evaluate a checkpoint (teacher and student) on its splits or a CSV")
    e.add_argument("target", help="run folder or checkpoint file")
    e.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint of a run folder")
    e.add_argument("--split", nargs="+", default=["validation", "testing"], choices=("validation", "testing"))
    e.add_argument("--labels", help="external label CSV (ISIC one-hot, HAM10000 metadata or image,label)")
    e.add_argument("--images", help="image folder of --labels")
    e.add_argument("--out", help="also write the results as JSON here")
    e.set_defaults(func=cmd_evaluate)
    pr = sub.add_parser("predict", help="class probabilities for images, as an ISIC submission CSV")
    pr.add_argument("target", help="run folder, checkpoint file, or .onnx file from `clcpmt export`")
    pr.add_argument("--images", required=True, help="image folder, or a text file with one image path per line")
    pr.add_argument("--out", required=True, help="CSV to write: image,MEL,NV,...")
    _model_choice(pr)
    pr.set_defaults(func=cmd_predict)
    x = sub.add_parser("export", help="the teacher (or student) as ONNX, preprocessing in its metadata, + model card")
    x.add_argument("target", help="run folder or checkpoint file")
    x.add_argument("--out", required=True, help="the .onnx file to write (MODEL_CARD.md goes beside it)")
    _model_choice(x)
    x.set_defaults(func=cmd_export)
    r = sub.add_parser("report", help="one self-contained HTML page about one or more runs")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", default="report.html")
    r.add_argument("--baseline", default="", help="method the paired differences are taken against (default: first)")
    r.set_defaults(func=cmd_report)
    b = sub.add_parser("bench", help="run a method x labeled x seed grid (resumable) and tabulate it")
    b.add_argument("grid", help="grid YAML file (see benchmarks/)")
    b.add_argument("--report", action="store_true", help="only collect finished runs into the tables")
    b.add_argument("--jobs", type=int, default=0, help="runs at once (default: the grid's `jobs`)")
    b.set_defaults(func=cmd_bench)
    c = sub.add_parser("compare", help="a grid's results.csv: mean ± std, seed-paired differences, gap closed")
    c.add_argument("results", help="results.csv of `clcpmt bench`")
    c.add_argument("--metric", nargs="+", default=["standard/bacc", "standard/f1", "standard/auc"])
    c.add_argument("--versus", nargs="+", default=["mean_teacher", "supervised"], help="reference rows")
    c.add_argument("--ceiling", default="supervised", help="the all-labels row of the gap (method or method+variant)")
    c.add_argument("--pair", nargs=2, metavar=("A", "B"), help="only A − B seed by seed (rows: method[+variant])")
    c.add_argument("--labeled", type=float, default=None, help="--pair: the labeled fraction, when a row has several")
    c.add_argument("--runs", action="store_true", help="one row per run (seed) instead: metrics, val AUC, wall s")
    c.set_defaults(func=cmd_compare)
    a = sub.add_parser("audit", help="per-class pseudo-label acceptance and precision of runs, with hidden labels")
    a.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of one task (their mean is shown)")
    a.add_argument("--low", type=float, help="multi-label: count negatives at p <= LOW (default: 1 - tau_negative)")
    a.set_defaults(func=cmd_audit)
    d = sub.add_parser("demo", help="Mean Teacher vs CLCP-MT on embedded synthetic data (CPU, minutes)")
    d.add_argument("--quiet", action="store_true", help="only the result table")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args, overrides = parser().parse_known_args(argv)
    try:
        args.func(args, overrides)
    except (ConfigError, DataError, CheckpointError, TrainingError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
