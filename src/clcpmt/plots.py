"""Per-run plot of the per-class thresholds, pseudo-label acceptance and precision (multi-label: and negatives)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def run_logs(run_dir: str | Path) -> list[Path]:
    """A run's metrics.csv files in training order: logs/, then logs/resume_1/, resume_2/, ... (a resumed run
    continues in logs/resume_N/; numeric order, so resume_10 comes after resume_9)."""
    logs = Path(run_dir) / "logs"
    resumed = sorted(logs.glob("resume_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    return [p for p in [logs / "metrics.csv", *resumed] if p.is_file()]


PANELS = ("threshold", "accept_rate", "pl_precision", "neg_threshold", "neg_rate", "neg_missed")


def epoch_log(run_dir: str | Path) -> pd.DataFrame:
    """The run's logged values per epoch (last value of each column in each epoch), resumed parts included."""
    logs = run_logs(run_dir)
    if not logs:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(p) for p in logs], ignore_index=True).groupby("epoch").last()


def class_panels(per_epoch: pd.DataFrame) -> object | None:
    """A matplotlib figure: per-class thresholds, acceptance, pseudo-label precision (multi-label: and negatives)
    over epochs; None when the run has no pseudo-label rule."""
    panels = [p for p in PANELS if any(c.startswith(p + "/") for c in per_epoch.columns)]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for col in [c for c in per_epoch.columns if c.startswith(panel + "/")]:
            ax.plot(per_epoch.index, per_epoch[col], marker=".", label=col.split("/", 1)[1])
        ax.set(title=panel.replace("_", " "), xlabel="epoch", ylim=(0, 1.02))
    axes[0][0].legend(fontsize=7)
    return fig


def plot_training(run_dir: str | Path) -> Path | None:
    """Write run_dir/thresholds.png from the run's metrics.csv files; None when the method has no pseudo-label rule."""
    run_dir = Path(run_dir)
    fig = class_panels(epoch_log(run_dir))
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "thresholds.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
