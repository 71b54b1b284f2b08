"""Benchmark grids: method × variant × labeled fraction × seed from one YAML file; resumable; a CSV and a table.

Each run is a separate `clcpmt train` process (a crash or kill loses at most that run's current epoch); a run with
a metrics.json is finished and skipped, a started run (config.yaml, no metrics.json) is resumed. `jobs` runs several
at once (a machine with many cores and a GPU); its output goes to train.log in the run folder.

A grid that outlives its machine (a 14-hour grid on machines lent for 3 hours, say) keeps each finished run's small
files in `records` (RECORD: config, metrics, logs, wall time, machine; no checkpoints, no per-image outputs), a
folder that can live in git; a run found there counts as finished on any later machine.

A *variant* is a named list of overrides (e.g. `tau_min_0.8: [--method.tau_min=0.8]`) run beside the defaults:
hyper-parameter studies are grids too, tabulated on the validation split (`table_split: validation`) because
nothing may be chosen on a test split.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import (
    ConfigError,
    TrainingError,
    build_dataclass,
    config_reference,
    read_yaml,
    reference_table,
    resolve_config,
)
from .plots import run_logs
from .stats import mean_std

GRID_METHODS = ("supervised", "mean_teacher", "fixmatch", "flexmatch", "freematch", "clcp_mt")


@dataclass(frozen=True)
class Grid:
    config: str = "isic2018_cpu"  # base training config (path or packaged name)
    out: str = "runs/bench"  # folder of the grid's runs and tables
    methods: tuple[str, ...] = GRID_METHODS  # x labeled x seeds: every combination runs, seed-major
    labeled: tuple[float, ...] = (0.2,)
    seeds: tuple[int, ...] = (0, 1, 2)
    overrides: tuple[str, ...] = ()  # extra --section.key=value for every run
    extra_runs: tuple[str, ...] = ()  # "method:labeled:seed[:variant]" runs beyond the grid (ablations, 5%/10%)
    variants: dict = field(default_factory=dict)  # name -> overrides, each run beside the defaults ("" = defaults)
    cross_variants: bool = True  # run every variant for every grid run; false: only where extra_runs names one
    official_labels: str = ""  # second test set (never used to choose anything): label CSV ...
    official_images: str = ""  # ... and its image folder
    table_split: str = "testing"  # split of the Markdown table: testing (results) | validation (studies)
    keep_last: bool = False  # keep a finished run's last.ckpt (false: removed; best.ckpt stays for evaluate/predict)
    jobs: int = 1  # runs at once, each with cores / jobs threads unless OMP_NUM_THREADS is set
    records: str = ""  # folder keeping each finished run's RECORD files; a run found there is finished ("" = none)


def reference() -> str:
    """docs/configuration.md: the training config's keys, then a grid file's."""
    grid = ["", "## Benchmark grid files (`clcpmt bench GRID.yaml`)", "",
            "Examples in `benchmarks/`. Finished runs are skipped, killed ones resumed; `results.csv` holds one row "
            "per run, `results.md` the tables, `report.html` the comparison page.", ""]  # fmt: skip
    grid += reference_table(Grid)
    return config_reference() + "\n".join(grid) + "\n"


def load_grid(path: str | Path) -> Grid:
    """Read a grid YAML file (keys of Grid; unknown keys are errors naming the file)."""
    if not Path(path).is_file():
        raise ConfigError(f"grid file {path} does not exist")
    data = read_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of grid keys (config, methods, seeds, ...) at the top level")
    grid = build_dataclass(Grid, data, "", str(path))
    for spec in grid.extra_runs:
        if len(spec.split(":")) not in (3, 4) or spec.count(":") == 3 and spec.split(":")[3] not in grid.variants:
            raise ConfigError(f"{path}: extra_runs entry '{spec}' must be method:labeled:seed[:variant of variants]")
    for name, overrides in grid.variants.items():
        if not str(name).replace(".", "").replace("_", "").isalnum() or not isinstance(overrides, list):
            raise ConfigError(f"{path}: variants.{name} must be a name of letters, digits, '.', '_' with a list")
    if grid.jobs < 1:
        raise ConfigError(f"{path}: jobs must be >= 1; got {grid.jobs}")
    if grid.records and Path(grid.records).resolve() == Path(grid.out).resolve():
        raise ConfigError(f"{path}: records must be a folder other than out ({grid.out}): it keeps copies of runs")
    if grid.table_split not in ("testing", "validation"):
        raise ConfigError(f"{path}: table_split must be testing or validation; got '{grid.table_split}'")
    return grid


Run = tuple[str, float, int, str]  # method, labeled, seed, variant ("" = defaults)


def grid_runs(grid: Grid) -> list[Run]:
    """Every run, seed-major so that a partial grid already covers every method and variant."""
    variants = ["", *grid.variants] if grid.cross_variants else [""]
    runs = [(m, lab, s, v) for s in grid.seeds for lab in grid.labeled for m in grid.methods for v in variants]
    for spec in grid.extra_runs:
        m, lab, s, *v = spec.split(":")
        runs.append((m, float(lab), int(s), v[0] if v else ""))
    return list(dict.fromkeys(runs))


_children: set[subprocess.Popen] = set()  # the `clcpmt train` processes now running
_stopping = threading.Event()  # set by SIGTERM or Ctrl-C: no new training process starts


def run_child(cmd: list[str], **popen_kwargs) -> None:
    """Run one training process to its end; a non-zero exit is a CalledProcessError. It is registered so that a
    SIGTERM to `bench` (`kill`, a scheduler's time limit) stops it too: by default the child would be orphaned and go
    on training, and a restarted bench would then train the same run folder twice at once."""
    if _stopping.is_set():
        raise SystemExit("bench is stopping: no new run started")
    env = {**popen_kwargs.pop("env", os.environ), PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(cmd, env=env, **popen_kwargs)
    _children.add(proc)
    if _stopping.is_set():  # the signal came between the check above and the add: the handler missed this process
        proc.terminate()
    try:
        code = proc.wait()
    finally:
        _children.discard(proc)
    if code:
        raise subprocess.CalledProcessError(code, cmd)


PARENT_ENV = "CLCPMT_BENCH_PID"  # set in the environment of the training processes bench starts


def stop_with_parent(parent: int) -> None:
    """Called by a training process that bench started: SIGTERM it when bench dies, even by SIGKILL or the OOM
    killer, which no handler of bench's sees (Linux's PR_SET_PDEATHSIG; elsewhere nothing). An orphaned run would
    go on training, and a restarted bench would train the same folder a second time at once."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # bench died before the line above: the signal would never come
        raise SystemExit(f"bench (pid {parent}) has stopped: this run is not started")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a scheduler or taskset sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def child_env(jobs: int, environ: dict | None = None, cores: int | None = None) -> dict:
    """The environment of a training process when `jobs` run at once: each gets cores // jobs intra-op threads
    (OMP_NUM_THREADS), unless the user set it. By default every process would use every core, and PyTorch's threads
    spin while they wait for each other: two 2-thread runs on 2 cores slow each other far more than twice.
    (Measured side by side on the 2-core Xeon, docs/performance.md: two 1-thread runs train about 7 % more steps per
    second together than one 2-thread run, so on a small CPU `jobs: 1` loses little.)"""
    env = dict(os.environ if environ is None else environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        if cores is None:
            cores = usable_cores()
        env["OMP_NUM_THREADS"] = str(max(1, cores // jobs))
    return env


def _stop_children(timeout: float = 60.0) -> None:
    _stopping.set()
    for proc in list(_children):
        proc.terminate()  # each run's last checkpoint is already on disk (written atomically): it resumes from it
    deadline = time.time() + timeout
    for proc in list(_children):
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_children()
    raise SystemExit(128 + signum)


def run_grid(grid: Grid) -> list[str]:
    """Train every missing run (`grid.jobs` at once); a run that fails does not stop the others. Returns the names
    of the failed runs. SIGTERM or Ctrl-C stops the running training processes and starts no other."""
    _stopping.clear()
    main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    pool = ThreadPoolExecutor(grid.jobs)  # threads only wait on `clcpmt train` processes
    futures = {run_name(*run): pool.submit(run_one, grid, *run) for run in grid_runs(grid)}
    failed = []
    try:
        for name, future in futures.items():
            try:
                future.result()
            except subprocess.CalledProcessError:
                failed.append(name)
    except BaseException:
        _stop_children()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if main:
            signal.signal(signal.SIGTERM, previous)
    return failed


def run_name(method: str, labeled: float, seed: int, variant: str = "") -> str:
    return f"{method}_lab{labeled:g}_seed{seed}" + (f"_{variant}" if variant else "")


def run_overrides(grid: Grid, method: str, labeled: float, seed: int, variant: str = "") -> list[str]:
    """The `clcpmt train` overrides of one run of the grid (after `--config grid.config`)."""
    return [
        f"--run_dir={Path(grid.out) / run_name(method, labeled, seed, variant)}",
        f"--method.name={method}",
        f"--data.labeled={labeled}",
        f"--data.seed={seed}",
        f"--train.seed={seed}",
        *grid.overrides,
        *grid.variants.get(variant, []),
    ]


def check_runs(grid: Grid, path: str | Path) -> None:
    """Build every run's configuration before any trains: a typo in a variant used by the grid's last run is an
    error now, naming the run, not after hours of training."""
    from .config import load_config

    for run in grid_runs(grid):
        if (Path(grid.out) / run_name(*run) / "config.yaml").is_file():
            continue  # started: it resumes from its own saved config
        try:
            load_config(resolve_config(grid.config), run_overrides(grid, *run))
        except ConfigError as e:
            raise ConfigError(f"{path}: run {run_name(*run)}: {e}") from None


RECORD = ("config.yaml", "metrics.json", "official_test.json", "wall_time.txt", "machine.txt", "logs")


def machine() -> str:
    """The CPU (model name, cores this process may use) a run's wall time was measured on, and the GPU if one is
    visible (torch is loaded by then: bench imports the runner before the first run)."""
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = usable_cores()
    torch = sys.modules.get("torch")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch is not None and torch.cuda.is_available() else ""
    return f"{cpu}, {cores} cores{gpu}"


def keep_record(run_dir: Path, records: Path) -> None:
    """Copy a finished run's RECORD files to records/<run>: written beside (a name of this process), then swapped
    in, so that records/<run> is always a whole record, this one or the one before."""
    dest = records / run_dir.name
    tmp, old = (records / f"{run_dir.name}.{kind}-{os.getpid()}" for kind in ("part", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in RECORD:
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, tmp / name)
        elif (run_dir / name).is_file():
            shutil.copy2(run_dir / name, tmp / name)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def restore_records(grid: Grid) -> list[str]:
    """Copy every run that `grid.records` holds and grid.out lacks back into grid.out (finished elsewhere: it has
    no checkpoint, so it is tabulated but cannot be evaluated again here). An unfinished local attempt at the same
    run is replaced (its checkpoints and logs are of another, unfinished training). Returns the runs restored."""
    from .runner import run_in_use

    restored = []
    for run in grid_runs(grid):
        src, dest = Path(grid.records) / run_name(*run), Path(grid.out) / run_name(*run)
        if not grid.records or not (src / "metrics.json").is_file() or (dest / "metrics.json").is_file():
            continue
        if dest.exists():
            if pid := run_in_use(dest):
                raise ConfigError(f"{dest} is training (process {pid}) and {src} says it finished elsewhere: stop "
                                  "one of them")  # fmt: skip
            print(f"{dest}: an unfinished attempt, replaced by the run recorded in {src}", file=sys.stderr)
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        restored.append(run_name(*run))
    return restored


def run_one(grid: Grid, method: str, labeled: float, seed: int, variant: str = "") -> Path:
    """Train (or resume, or skip) one run and evaluate it on the official test set."""
    run_dir = Path(grid.out) / run_name(method, labeled, seed, variant)
    if not (run_dir / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "clcpmt.cli", "train"]
        if (run_dir / "config.yaml").is_file():  # started before: resume (from last.ckpt, or from scratch if none)
            cmd += ["--resume", str(run_dir)]
        else:
            cmd += ["--config", grid.config, *run_overrides(grid, method, labeled, seed, variant)]
        cmd += ["--train.progress_bar=false"]
        # wall_time.txt sums every attempt of a resumed run (an attempt killed by SIGKILL is not counted)
        wall = run_dir / "wall_time.txt"
        before, start = float(wall.read_text()) if wall.is_file() else 0.0, time.time()
        (run_dir / "official_test.json").unlink(missing_ok=True)  # of an earlier attempt's checkpoint, if any
        env = child_env(grid.jobs)
        try:
            if grid.jobs > 1:  # interleaved output of parallel runs would be unreadable
                run_dir.mkdir(parents=True, exist_ok=True)
                with open(run_dir / "train.log", "a") as log:
                    run_child(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            else:
                run_child(cmd, env=env)
        finally:
            if run_dir.is_dir():
                wall.write_text(f"{before + time.time() - start:.0f}\n")
                seen = (run_dir / "machine.txt").read_text().splitlines() if (run_dir / "machine.txt").is_file() else []
                (run_dir / "machine.txt").write_text("\n".join(dict.fromkeys([*seen, machine()])) + "\n")
        if not (run_dir / "metrics.json").is_file():  # exit status 0 without finishing: never evaluate a partial run
            print(f"{run_dir}: the training process ended without writing metrics.json", file=sys.stderr)
            raise subprocess.CalledProcessError(0, cmd)
        # A finished run is never resumed (its metrics.json skips it), so its last.ckpt only fills the disk: a grid
        # of 100 runs kept ~8 GB of them.
        if not grid.keep_last:
            (run_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    official = run_dir / "official_test.json"
    best = run_dir / "checkpoints" / "best.ckpt"
    stale = official.is_file() and best.is_file() and official.stat().st_mtime < best.stat().st_mtime
    # stale: of a checkpoint since replaced; no best.ckpt: a run restored from grid.records, evaluated where it trained
    if grid.official_labels and best.is_file() and (not official.is_file() or stale):
        from .inference import evaluate_csv

        res = evaluate_csv(best, grid.official_labels, grid.official_images, verbose=False)
        official.write_text(json.dumps(res["external/teacher"], indent=2))
    if grid.records:
        keep_record(run_dir, Path(grid.records))
    return run_dir


def collect(grid: Grid) -> list[dict]:
    """One row per finished run: its `grid.table_split` metrics (teacher, best validation epoch), the other split's
    headline and per-class AUC (val_* or test_*: a study tabulated on validation can report testing in a later,
    written-first stage from the same CSV) and the official test."""
    other, prefix = ("validation", "val_") if grid.table_split == "testing" else ("testing", "test_")
    rows = []
    for method, labeled, seed, variant in grid_runs(grid):
        run_dir = Path(grid.out) / run_name(method, labeled, seed, variant)
        if not (run_dir / "metrics.json").is_file():
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        row = {"method": method, "variant": variant, "labeled": labeled, "seed": seed}
        table = metrics[f"{grid.table_split}/teacher"]
        row |= {k: v for k, v in table.items() if k != "confusion"}
        classes = [k.split("/", 1)[1] for k in table if k.startswith("sens/")]
        if "confusion" in table:  # single-label: images per class (rows of the confusion matrix), for tail_columns
            row |= {f"support/{c}": sum(n) for c, n in zip(classes, table["confusion"], strict=True)}
        row |= {prefix + k: v for k, v in metrics[f"{other}/teacher"].items() if k.startswith(("standard/", "auc/"))}
        if (run_dir / "official_test.json").is_file():
            row["official/bacc"] = json.loads((run_dir / "official_test.json").read_text())["standard/bacc"]
        row |= final_pseudo_labels(run_dir)
        wall = run_dir / "wall_time.txt"
        row["wall_s"] = float(wall.read_text()) if wall.is_file() else float("nan")
        rows.append(row)
    return rows


def final_pseudo_labels(run_dir: Path) -> dict[str, float]:
    """The pseudo-label statistics of the run's last logged epoch (pseudo-labelling methods; a resumed run's last
    log), per class: `final_threshold/<class>` (0-1), `final_accept_rate/<class>` (% of the unlabeled images
    predicted as the class that passed its threshold in that epoch; predicted by the teacher, or for the FixMatch
    family by the student's weak view) and `final_pl_precision/<class>` (% of those that are of the class by their
    hidden label)."""
    rows = []
    for log in run_logs(run_dir):
        with open(log, newline="") as f:
            rows += [r for r in csv.DictReader(f) if any(k.startswith("threshold/") and v for k, v in r.items())]
    if not rows:
        return {}
    scale = {"threshold/": 1.0, "accept_rate/": 100.0, "pl_precision/": 100.0}
    return {
        f"final_{k}": float(v) * scale[k.split("/")[0] + "/"]
        for k, v in rows[-1].items()
        if k.startswith(tuple(scale)) and v
    }


HEADLINE = [("standard/auc", "AUC"), ("standard/bacc", "BAcc"), ("standard/f1", "F1")]
PROTOCOLS = [
    ("srcmt/auc", "srcmt AUC"),
    ("srcmt/acc", "Acc"),
    ("srcmt/sens", "Sens"),
    ("srcmt/spec", "Spec"),
    ("srcmt/f1", "srcmt F1"),
    ("official/bacc", "ISIC test BAcc"),
    ("val_standard/auc", "val AUC"),
]


def tail_columns(rows: list[dict], k: int = 3) -> list[tuple[str, str]]:
    """The recall columns of the k rarest classes of the table split (fewest images, `support/<class>` of the
    rows), in class order: on HAM10000 AKIEC, DF and VASC. None for multi-label rows (they have no support)."""
    names = list(dict.fromkeys(key.split("/", 1)[1] for r in rows for key in r if key.startswith("support/")))
    # a results.csv row has every column: "" where a run has none
    mean = {c: float(np.mean([float(r[f"support/{c}"]) for r in rows if r.get(f"support/{c}") not in (None, "")]))
            for c in names}  # fmt: skip
    rarest = set(sorted(names, key=mean.__getitem__)[:k])
    return [(f"sens/{c}", f"{c} rec") for c in names if c in rarest]


def columns_of(rows: list[dict]) -> list[tuple[str, str]]:
    """The grid table's columns: the headline metrics, the tail classes' recall, the other protocols."""
    return HEADLINE + tail_columns(rows) + PROTOCOLS


def markdown(rows: list[dict], columns: list[tuple[str, str]] | None = None) -> str:
    """Mean ± std over seeds per (method[+variant], labeled) for `columns`; n = number of seeds.

    columns: default columns_of(rows). Columns that no run has (the official test of a grid without one) are
    left out.
    """
    columns = columns_of(rows) if columns is None else columns
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        name = r["method"] + (f" +{r['variant']}" if r.get("variant") else "")
        groups.setdefault((name, r["labeled"]), []).append(r)
    columns = [c for c in columns if any(np.isfinite(float(r.get(c[0], np.nan))) for r in rows)]
    head = "| method | labeled | n | " + " | ".join(name for _, name in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]
    for (method, labeled), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key, _ in columns:
            cells.append(mean_std([float(r.get(key, np.nan)) for r in rs]))
        lines.append(f"| {method} | {labeled:g} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(rows: list[dict], table_split: str = "testing") -> str:
    """results.md of a grid: the table (teacher at the best validation epoch), per-class AUC and recall, and the
    per-class thresholds, acceptance and pseudo-label precision at the end of training."""
    columns = columns_of(rows)
    if table_split != "testing":
        columns = [c for c in columns if c[0] not in ("official/bacc", "val_standard/auc")]
    title = f"{table_split} split, teacher at the best validation epoch, mean ± std over seeds"
    text = f"{title}\n\n{markdown(rows, columns)}\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    per_class = [(k, k.split("/", 1)[1]) for k in keys if k.startswith("auc/")]
    classes = [name for _, name in per_class]
    if per_class:
        text += f"\nPer-class AUC, {table_split} split\n\n{markdown(rows, per_class)}\n"
    recall = [(k, k.split("/", 1)[1]) for k in keys if k.startswith("sens/")]
    if recall and any(k.startswith("support/") for k in keys):  # single-label: every class's recall
        text += f"\nPer-class recall (sensitivity), {table_split} split\n\n{markdown(rows, recall)}\n"
    titles = {
        "final_threshold/": "Per-class thresholds at the end of training",
        "final_accept_rate/": "Per-class acceptance at the end of training (%, last epoch; single-label: of the "
        "unlabeled images predicted as the class, those that passed its threshold; multi-label: positive "
        "pseudo-labels per unlabeled image)",
        "final_pl_precision/": "Per-class precision of the accepted pseudo-labels at the end of training (%, by the "
        "unlabeled images' hidden labels, last epoch)",
    }
    for prefix, title in titles.items():
        cols = sorted(  # the logger writes them in alphabetical order: use the classes'
            [(k, k.split("/", 1)[1]) for k in keys if k.startswith(prefix)],
            key=lambda kn: classes.index(kn[1]) if kn[1] in classes else len(classes),
        )
        cols = [c for c in cols if any(np.isfinite(float(r.get(c[0], np.nan))) for r in rows)]  # nan: none accepted
        if cols:
            text += f"\n{title}\n\n{markdown([r for r in rows if any(k in r for k, _ in cols)], cols)}\n"
    return text


def bench(grid_path: str | Path, only_report: bool = False, jobs: int = 0) -> Path:
    """Run every missing run of the grid (`jobs` at once; 0 = the grid's own), then write results.csv and
    results.md into grid.out."""
    if jobs < 0:
        raise ConfigError(f"--jobs must be >= 0 (0 = the grid file's `jobs`); got {jobs}")
    grid = load_grid(grid_path)
    if jobs:
        grid = dataclasses.replace(grid, jobs=jobs)
    out = Path(grid.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if restored := restore_records(grid):
        print(f"{len(restored)} run(s) finished elsewhere, from {grid.records}: {', '.join(restored)}", file=sys.stderr)
    if not only_report:
        # what the grid's end needs (runner, and the report it imports), loaded now: a grid runs for hours, and a
        # module first imported after an edit would meet the older modules loaded at the start
        from . import runner  # noqa: F401

        check_runs(grid, grid_path)
        failed = run_grid(grid)
    rows = collect(grid)
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "results.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    (out / "results.md").write_text(results_markdown(rows, grid.table_split))
    finished = [Path(grid.out) / run_name(*run) for run in grid_runs(grid)]
    finished = [d for d in finished if (d / "metrics.json").is_file()]
    for d in finished if grid.records else []:  # also runs finished before `records` was set, and by --report
        unevaluated = grid.official_labels and not (d / "official_test.json").is_file()  # never recorded so
        if not unevaluated and any((d / f).exists() and not (Path(grid.records) / d.name / f).exists() for f in RECORD):
            keep_record(d, Path(grid.records))
    if finished:
        from .report import write_report

        write_report(finished, out / "report.html", per_run=False)  # each run has its own full report
    if failed:
        raise TrainingError(
            f"{len(failed)} run(s) of {grid_path} failed: {', '.join(failed)} (their output is above; the other "
            f"runs are tabulated in {out / 'results.md'}). Run the same command again to retry them"
        )
    return out
