"""`clcpmt report`: one self-contained HTML page (plots embedded as PNG data, no network) about one or more runs.

Per run: configuration and data summary, validation metrics and loss terms per epoch, per-class thresholds,
acceptance and pseudo-label precision over training, the testing per-class table, confusion matrix, ROC curves,
a reliability diagram with its expected calibration error, and a t-SNE map of the teacher's features on the testing
split. With several runs: a comparison table (mean ± std over runs that differ only by seed, seed-paired differences
against a baseline) and overlaid validation curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import with_defaults
from .inference import testing_outputs
from .plots import class_panels, epoch_log
from .stats import diff_cell, paired_difference

HEADLINE = (("standard/auc", "macro AUC"), ("standard/bacc", "balanced acc"), ("standard/f1", "macro F1"))
STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
h2{border-bottom:2px solid #444;margin-top:2em}.note{color:#555;font-size:90%}
figure{display:inline-block;vertical-align:top;margin:.5em}figcaption{font-size:90%;color:#444}"""


def _png(fig: object, caption: str) -> str:
    """A matplotlib figure as an <img> with the PNG inlined (base64), under its caption."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    cap = html.escape(caption)
    return f'<figure><figcaption>{cap}</figcaption><img alt="{cap}" src="data:image/png;base64,{data}"></figure>'


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.4) -> tuple[object, np.ndarray]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _curves(df: pd.DataFrame, prefixes: tuple[str, ...], title: str, ylim: tuple | None = None) -> str:
    cols = [c for c in df.columns if c.startswith(prefixes) and df[c].notna().any()]
    if not cols:
        return ""
    fig, (ax,) = _figure(1, 6.0)
    for c in cols:
        ax.plot(df.index, df[c], marker=".", label=c)
    ax.set(title=title, xlabel="epoch", ylim=ylim)
    ax.legend(fontsize=7)
    return _png(fig, title)


def _class_panels(df: pd.DataFrame) -> str:
    fig = class_panels(df)
    if fig is None:
        return "<p class=note>No pseudo-label rule in this method.</p>"
    return _png(fig, "per-class thresholds, acceptance and pseudo-label precision over training")


def _roc(probs: np.ndarray, onehot: np.ndarray, classes: list[str]) -> str:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, (ax,) = _figure(1, 5.5, 4.5)
    for c, name in enumerate(classes):
        if 0 < onehot[:, c].sum() < len(onehot):
            fpr, tpr, _ = roc_curve(onehot[:, c], probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} ({100 * roc_auc_score(onehot[:, c], probs[:, c]):.1f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(title="ROC per class (testing, teacher; AUC)", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7)
    return _png(fig, "ROC curves per class (testing split, teacher)")


def reliability(
    probs: np.ndarray, correct: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Equal-width confidence bins: (bin confidence, bin accuracy, bin count, expected calibration error).

    probs: (N,) confidence of the prediction; correct: (N,) 0/1. ECE = sum over bins of |acc - conf| · n_bin / N.
    """
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(float)
    conf = np.bincount(which, probs, minlength=bins) / np.maximum(count, 1)
    acc = np.bincount(which, correct.astype(float), minlength=bins) / np.maximum(count, 1)
    return conf, acc, count, float((np.abs(acc - conf) * count).sum() / max(len(probs), 1))


def _calibration(probs: np.ndarray, targets: np.ndarray, multi: bool) -> str:
    if multi:  # every (image, finding) pair: the probability of the predicted side
        conf = np.maximum(probs, 1 - probs).ravel()
        correct = ((probs >= 0.5) == (targets > 0.5)).ravel()
    else:
        conf, correct = probs.max(1), probs.argmax(1) == targets
    bin_conf, bin_acc, count, ece = reliability(conf, correct)
    fig, (ax,) = _figure(1, 4.5, 4.2)
    keep = count > 0
    ax.bar(bin_conf[keep], bin_acc[keep], width=1 / 15, alpha=0.7, edgecolor="k", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="perfect calibration")
    ax.set(title=f"reliability (testing, teacher): ECE {100 * ece:.2f} %", xlabel="confidence", ylabel="accuracy")
    ax.legend(fontsize=7)
    return _png(fig, f"reliability diagram (testing, teacher): ECE {100 * ece:.2f} %")


def _tsne(features: np.ndarray, labels: np.ndarray, classes: list[str], seed: int = 0) -> str:
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 10:
        return ""
    keep = np.random.default_rng(seed).permutation(n)[:2000]  # t-SNE is quadratic: 2,000 points at most
    xy = TSNE(2, init="pca", random_state=seed, perplexity=min(30, (len(keep) - 1) // 3)).fit_transform(features[keep])
    fig, (ax,) = _figure(1, 6.0, 5.0)
    for c, name in enumerate(classes):
        sel = labels[keep] == c
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=5, label=f"{name} ({sel.sum()})")
    ax.set(title="t-SNE of the teacher's pooled features (testing split)", xticks=[], yticks=[])
    ax.legend(fontsize=7, markerscale=3)
    return _png(fig, "t-SNE of the teacher's pooled features (testing split)")


def _confusion(matrix: list[list[int]], classes: list[str]) -> str:
    m = np.asarray(matrix, dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, (ax,) = _figure(1, 5.0, 4.5)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(m)):
        for j in range(len(m)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="k" if share[i, j] < 0.6 else "w")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true",
           title="confusion (testing, teacher; colour: share of the row)")  # fmt: skip
    ax.set_xticklabels(classes, rotation=45, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    return _png(fig, "confusion matrix (testing, teacher)")


def _data_summary(run_dir: Path, classes: list[str]) -> str:
    rows = []
    for part in ("labeled", "unlabeled", "validation", "testing"):
        path = run_dir / "splits" / f"{part}.csv"
        if path.is_file():
            table = pd.read_csv(path)
            counts = [int(table[c].sum()) if c in table else "-" for c in classes]
            rows.append([part, len(table), *counts])
    return _table(["part", "images", *classes], rows) if rows else ""


def run_section(run_dir: Path) -> str:
    """The HTML of one run."""
    cfg = with_defaults(yaml.safe_load((run_dir / "config.yaml").read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    test = metrics.get("testing/teacher", {})
    classes = [k.split("/", 1)[1] for k in test if k.startswith("auc/")]
    df = epoch_log(run_dir)
    parts = [f"<h2>{html.escape(run_dir.name)}</h2>",
             f"<p>method <b>{html.escape(cfg['method']['name'])}</b>, backbone {html.escape(cfg['model']['backbone'])}"
             f", data {html.escape(cfg['data']['dataset'])}, labeled {cfg['data']['labeled']}, "
             f"{cfg['train']['epochs']} epochs, seed {cfg['train']['seed']}; best epoch "
             f"{metrics.get('best_epoch', -2) + 1} by validation {html.escape(cfg['train']['monitor'])}</p>",
             _data_summary(run_dir, classes),
             "<details><summary>configuration</summary><pre>" + html.escape(yaml.safe_dump(cfg, sort_keys=False))
             + "</pre></details>"]  # fmt: skip
    if metrics:
        parts.append("<h3>Headline (teacher)</h3>")
        rows = [[s, *(metrics.get(f"{s}/{w}", {}).get(k, float("nan")) for k, _ in HEADLINE)]
                for s in ("validation", "testing") for w in ("teacher",)]  # fmt: skip
        parts.append(_table(["split", *(n for _, n in HEADLINE)], rows))
        parts.append("<h3>Testing per class (teacher)</h3>")
        per = [[c, *(test.get(f"{k}/{c}", float("nan")) for k in ("auc", "sens", "spec", "f1"))] for c in classes]
        parts.append(_table(["class", "AUC", "sensitivity", "specificity", "F1"], per))
    if not df.empty:
        parts.append("<h3>Training</h3>")
        parts.append(_curves(df, ("val/", "val_student/"), "validation metrics per epoch (teacher, student)", (0, 1)))
        parts.append(_curves(df, ("train/loss/",), "loss terms per epoch"))
        parts.append(_class_panels(df))
    if metrics and classes:
        out = testing_outputs(run_dir)  # written by training; computed here only for runs of older releases
        multi = out["targets"].ndim == 2
        onehot = out["targets"] if multi else np.eye(len(classes))[out["targets"]]
        parts += ["<h3>Testing split (teacher)</h3>", _roc(out["probs"], onehot, classes),
                  _calibration(out["probs"], out["targets"], multi)]  # fmt: skip
        if "confusion" in test:
            parts.append(_confusion(test["confusion"], classes))
        labels = out["targets"] if not multi else np.where(onehot.any(1), onehot.argmax(1), -1)
        parts.append(_tsne(out["features"], labels, classes))
    return "\n".join(p for p in parts if p)


def comparison(run_dirs: list[Path], baseline: str = "") -> str:
    """Runs that differ only by seed form a group: mean ± std; each group against the baseline group, paired by seed."""
    rows = []
    for d in run_dirs:
        cfg = with_defaults(yaml.safe_load((d / "config.yaml").read_text()))  # a key added since: its default
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        flat = {f"{s}.{k}": v for s, sec in cfg.items() if isinstance(sec, dict) for k, v in sec.items()}
        group = {k: v for k, v in flat.items() if k not in ("train.seed", "data.seed")}
        test = metrics.get("testing/teacher", {})
        rows.append({"run": d.name, "group": json.dumps(group, sort_keys=True, default=str),
                     "method": cfg["method"]["name"], "seed": cfg["train"]["seed"],
                     **{k: test.get(k, np.nan) for k, _ in HEADLINE}})  # fmt: skip
    df = pd.DataFrame(rows)
    names = {g: " / ".join(df[df.group == g].run) for g in df.group.unique()}
    out = ["<h2>Comparison (testing, teacher)</h2>"]
    table = []
    for g, sub in df.groupby("group", sort=False):
        cells = [f"{sub[k].mean():.2f} ± {sub[k].std(ddof=1):.2f}" if len(sub) > 1 else f"{sub[k].iloc[0]:.2f}"
                 for k, _ in HEADLINE]  # fmt: skip
        table.append([names[g], sub.method.iloc[0], len(sub), *cells])
    out.append(_table(["runs", "method", "n", *(n for _, n in HEADLINE)], table))
    chosen = df[df.method == baseline] if baseline else df
    base = df[df.group == chosen.group.iloc[0]] if len(chosen) else chosen  # one group: its runs differ by seed only
    if len(base) and df.group.nunique() > 1:
        out.append(f"<p>Seed-paired differences against {html.escape(base.method.iloc[0])} (mean ± standard error "
                   "of the paired differences; n = seeds both have)</p>")  # fmt: skip
        paired = []
        for g, sub in df.groupby("group", sort=False):
            if g == base.group.iloc[0]:
                continue
            cells, n = [], 0
            for k, _ in HEADLINE:
                d, se, n = paired_difference(sub.set_index("seed")[k].to_dict(), base.set_index("seed")[k].to_dict())
                cells.append(diff_cell(d, se, n))
            paired.append([names[g], n, *cells])
        out.append(_table(["runs", "n", *(n for _, n in HEADLINE)], paired))
    fig, axes = _figure(3, 4.5)
    for d in run_dirs:
        log = epoch_log(d)
        for ax, key in zip(axes, ("val/auc", "val/bacc", "val/f1"), strict=True):
            if key in log:
                ax.plot(log.index, log[key], marker=".", label=d.name)
                ax.set(title=f"{key} (teacher)", xlabel="epoch")
    axes[0].legend(fontsize=6)
    out.append(_png(fig, "validation metrics per epoch, every run"))
    return "\n".join(out)


def write_report(run_dirs: list[str | Path], out: str | Path, baseline: str = "", per_run: bool = True) -> Path:
    """Write the report of `run_dirs` (each a finished or running run folder) to `out`. per_run=False (a grid's
    report): the comparison only, with a link to each run's own report.html."""
    from .data.readers import DataError

    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not (d / "config.yaml").is_file():
            raise DataError(f"{d} is not a run folder (no config.yaml)")
        if not (d / "metrics.json").is_file() and not any((d / "checkpoints").glob("*.ckpt")):
            raise DataError(f"{d} has no metrics.json and no checkpoint: no epoch has finished, nothing to report")
    out = Path(out)
    body = [comparison(dirs, baseline)] if len(dirs) > 1 else []
    if per_run:
        body += [run_section(d) for d in dirs]
    else:
        links = [f'<li><a href="{html.escape(str(Path(os.path.relpath(d, out.parent)) / "report.html"))}">'
                 f"{html.escape(d.name)}</a></li>" if (d / "report.html").is_file() else
                 f"<li>{html.escape(d.name)} (finished on another machine: no report of its own here)</li>"
                 for d in dirs]  # fmt: skip
        body.append("<h2>Runs (each with its own report)</h2><ul>" + "".join(links) + "</ul>")
    title = "clcpmt report: " + ", ".join(d.name for d in dirs)
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
