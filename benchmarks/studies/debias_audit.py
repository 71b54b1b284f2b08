"""Choose, on the VALIDATION split, how to debias a CLCP-MT teacher's pseudo-labels, before any debiased run trains.

For each given run (CLCP-MT or MT + CAPR without `method.debias`), its best checkpoint's teacher gives probabilities
p on the validation images and on the unlabeled training images; p_bar is their mean over the unlabeled images
(what `method.debias`'s running mean estimates in training) and pi the labeled set's class prior. Each candidate
turns p into p~ = softmax(log p - lam · log(p_bar / target)), with `thresholds.Debias` as in training:

- none: p~ = p (CLCP-MT as published)
- uniform, lam: target uniform (DebiasPL's adjustment; lam = 1 aligns the pseudo-labels to a uniform distribution,
  0.4 is USB's DebiasPL default)
- labeled, lam = 1: target pi (distribution alignment as in ReMixMatch: p · pi / p_bar, renormalised), which raises
  a class the teacher predicts less often than the labeled set holds it, without pushing the majority class
  towards a uniform share

Per candidate, on the validation images (mean over the runs, i.e. the seeds): the balanced accuracy and macro F1 of
the pseudo-labels argmax p~, the CAPR thresholds that p~ of the unlabeled images would give (the steady state of
the rule's confidence status with this teacher held fixed), and per class the share of its images that receive a
correct pseudo-label at those thresholds (reached) and the precision of the accepted ones.

The choice rule, fixed before reading the table: the candidate with the highest mean validation macro F1 of its
pseudo-labels (F1 counts the wrong pseudo-labels that flooding a tail class brings; balanced accuracy alone
rewards them). A static audit: the teacher here was trained without debiasing; a debiased run's teacher changes.

    python benchmarks/studies/debias_audit.py runs/bench_isic2018_cpu64/clcp_mt_lab0.2_seed{0,1,2}
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from clcpmt.audit import per_class
from clcpmt.data.sources import prepare_data
from clcpmt.inference import predict_probs
from clcpmt.losses import class_prior
from clcpmt.metrics import standard_metrics
from clcpmt.system import load_system
from clcpmt.thresholds import CAPRThreshold, Debias

CANDIDATES = [("none", "", 0.0), ("uniform, lam 0.4", "uniform", 0.4), ("uniform, lam 1", "uniform", 1.0),
              ("labeled, lam 1", "labeled", 1.0)]  # fmt: skip


def adjust(p: torch.Tensor, p_unlabeled: torch.Tensor, prior: torch.Tensor, target: str, lam: float) -> torch.Tensor:
    """p~ (N, C) of one candidate: training's `Debias` with p_bar the mean of p_unlabeled (N_U, C). prior: (C,)."""
    if lam == 0:
        return p
    debias = Debias(p.shape[1], lam, momentum=0.0, target=prior if target == "labeled" else None)
    debias.update(p_unlabeled)  # momentum 0, one update: p_bar is exactly this mean
    return debias(p)


def capr_steady_state(p_unlabeled: torch.Tensor, tau: float, tau_min: float) -> torch.Tensor:
    """CAPR's thresholds (C,) when its confidence status is the mean over these images (momentum 0, past warm-up)."""
    rule = CAPRThreshold(p_unlabeled.shape[1], len(p_unlabeled), tau, tau_min, momentum=0.0, warmup_epochs=0)
    rule.update(p_unlabeled, torch.arange(len(p_unlabeled)))
    return rule.thresholds(epoch=float("inf"))


def audit(run: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(classes, (K, 2) validation bacc and F1 in %, (K, 3, C) threshold, reached %, precision %) for K candidates."""
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise SystemExit(f"{best} not found: a finished run keeps its best checkpoint there")
    module, cfg = load_system(best, announce=False)
    if module.method.debias is not None or module.method.rule is None or cfg.method.status != "confidence":
        raise SystemExit(f"{run}: a CLCP-MT or MT + CAPR run with CAPR's confidence status, without method.debias, "
                         "is needed")  # fmt: skip
    data = prepare_data(cfg.data)
    if data.task != "single":
        raise SystemExit(f"{run}: a single-label run is needed (task is {data.task})")
    val, unl = data.parts["validation"], data.parts["unlabeled"]
    with torch.no_grad():
        p_val = predict_probs(module, data.images, val)["teacher"]
        p_unl = predict_probs(module, data.images, unl)["teacher"]
    y = torch.as_tensor(data.targets[val])
    prior = class_prior(torch.as_tensor(data.targets[data.parts["labeled"]]), len(data.classes))
    scores, tables = [], []
    for _, target, lam in CANDIDATES:
        q_val, q_unl = adjust(p_val, p_unl, prior, target, lam), adjust(p_unl, p_unl, prior, target, lam)
        m = standard_metrics(q_val, y)
        scores.append([100 * float(m["bacc"]), 100 * float(m["f1"])])
        t = capr_steady_state(q_unl, cfg.method.tau, cfg.method.tau_min)
        tables.append(per_class(q_val.numpy(), y.numpy(), t.numpy())[5:])  # threshold, reached, precision
    return data.classes, np.array(scores), np.stack(tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    results = [audit(r) for r in args.runs]
    classes = results[0][0]
    scores = np.stack([s for _, s, _ in results])  # (R, K, 2)
    per_class = np.stack([p for _, _, p in results])  # (R, K, 3, C)
    names = ", ".join(r.name for r in args.runs)
    print(f"validation, teacher of best.ckpt; mean over {len(args.runs)} run(s): {names}")
    print("\n| candidate | pseudo-label bal. acc. | pseudo-label macro F1 |\n|---|---|---|")
    for k, (name, _, _) in enumerate(CANDIDATES):
        bacc, f1 = scores[:, k].mean(0)
        sd = scores[:, k].std(0, ddof=1) if len(results) > 1 else np.full(2, np.nan)
        print(f"| {name} | {bacc:.2f} ± {sd[0]:.2f} | {f1:.2f} ± {sd[1]:.2f} |")
    chosen = CANDIDATES[int(scores[:, :, 1].mean(0).argmax())][0]
    print(f"\nchosen (highest mean validation macro F1): {chosen}")
    for i, what in enumerate(("CAPR threshold", "reached, % of the class's images", "precision of the accepted, %")):
        print(f"\n{what}\n\n| candidate | " + " | ".join(classes) + " |\n|---" + "|---" * len(classes) + "|")
        for k, (name, _, _) in enumerate(CANDIDATES):
            v = per_class[:, k, i]
            cells = [
                "-" if np.isnan(v[:, c]).all() else f"{np.nanmean(v[:, c]):.{2 if i == 0 else 0}f}"
                for c in range(len(classes))
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
