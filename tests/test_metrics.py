import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from clcpmt.config import ISIC_CLASSES
from clcpmt.metrics import (
    argmax_with_ties,
    f1_thresholds,
    format_report,
    multilabel_metrics,
    srcmt_metrics,
    standard_metrics,
)


def random_pair(seed: int, n: int = 300, c: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    targets[:c] = torch.arange(c)  # every class present
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(targets, c)
    return logits.softmax(1), targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_metrics_equal_sklearn(seed):
    probs, targets = random_pair(seed)
    p, y = probs.numpy(), targets.numpy()
    pred = p.argmax(1)
    m = standard_metrics(probs, targets)
    assert m["auc"].item() == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6)
    assert m["bacc"].item() == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["f1"].item() == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert np.allclose(m["sens_c"].numpy(), skm.recall_score(y, pred, average=None))
    assert np.array_equal(m["confusion"].numpy(), skm.confusion_matrix(y, pred))
    cm = skm.confusion_matrix(y, pred)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    assert np.allclose(m["spec_c"].numpy(), tn / (tn + cm.sum(0) - np.diag(cm)))
    per_class_auc = [skm.roc_auc_score(y == k, p[:, k]) for k in range(7)]
    assert np.allclose(m["auc_c"].numpy(), per_class_auc, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_srcmt_metrics_equal_sklearn_per_class_means(seed):
    probs, targets = random_pair(seed)
    p, y = probs.numpy(), targets.numpy()
    rows = []
    for k in range(7):
        t, b = (y == k).astype(int), (p[:, k] >= 0.18).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(t, b, labels=[0, 1]).ravel()
        rows.append(
            [
                skm.roc_auc_score(t, p[:, k]),
                skm.accuracy_score(t, b),
                tp / (tp + fn),
                tn / (tn + fp),
                skm.f1_score(t, b),
            ]
        )
    expected = np.mean(rows, axis=0)
    m = srcmt_metrics(probs, targets)
    got = [m[k].item() for k in ("auc", "acc", "sens", "spec", "f1")]
    assert np.allclose(got, expected, atol=1e-6)


def test_srcmt_threshold_is_inclusive():
    probs = torch.tensor([[0.18, 0.82], [0.9, 0.1]])
    m = srcmt_metrics(probs, torch.tensor([0, 1]))
    assert m["sens"].item() == pytest.approx(0.5)  # class 0: p = 0.18 >= 0.18 -> sens 1 (0 if exclusive); class 1: 0


def test_balanced_accuracy_equals_official_isic_scorer():
    pd = pytest.importorskip("pandas")
    isic = pytest.importorskip("isic_challenge_scoring.metrics")
    probs, targets = random_pair(7, n=500)
    probs[5] = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.1, 0.05, 0.05])  # a tie: ISIC counts it as wrong
    names = [f"ISIC_{i:07d}" for i in range(len(targets))]
    truth = pd.DataFrame(torch.nn.functional.one_hot(targets, 7).double().numpy(), index=names, columns=ISIC_CLASSES)
    pred = pd.DataFrame(probs.double().numpy(), index=names, columns=ISIC_CLASSES)
    official = isic.balanced_multiclass_accuracy(truth, pred, pd.Series(1.0, index=names))
    assert standard_metrics(probs, targets)["bacc"].item() == pytest.approx(official, abs=1e-6)


def test_ties_are_wrong():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    assert argmax_with_ties(probs).tolist() == [-1, 1, 2]
    m = standard_metrics(probs, torch.tensor([0, 1, 2]))
    assert m["sens_c"].tolist() == [0.0, 1.0, 1.0]
    assert m["confusion"].sum().item() == 2


def test_format_report_lists_every_class():
    probs, targets = random_pair(0)
    text = format_report(probs, targets, ISIC_CLASSES, "validation")
    assert all(c in text for c in ISIC_CLASSES) and "balanced acc" in text and "srcmt" in text


def test_multilabel_metrics_equal_sklearn_and_f1_thresholds_maximise_f1():
    g = torch.Generator().manual_seed(4)
    targets = (torch.rand(200, 5, generator=g) < torch.tensor([0.4, 0.3, 0.2, 0.1, 0.05])).float()
    probs = (torch.rand(200, 5, generator=g) + targets * 0.6).clamp(max=1) * 0.9
    y, p = targets.numpy(), probs.numpy()
    thr = f1_thresholds(probs, targets)
    m = multilabel_metrics(probs, targets, thr)
    assert np.allclose(m["auc_c"].numpy(), [skm.roc_auc_score(y[:, k], p[:, k]) for k in range(5)], atol=1e-6)
    f1 = [skm.f1_score(y[:, k], p[:, k] >= thr[k].item()) for k in range(5)]
    assert np.allclose(m["f1_c"].numpy(), f1, atol=1e-6)
    for k in range(5):  # no other threshold gives a higher F1
        best = max(skm.f1_score(y[:, k], p[:, k] >= t) for t in np.unique(p[:, k]))
        assert f1[k] == pytest.approx(best, abs=1e-6)


def test_auc_of_a_class_without_positives_is_left_out_of_the_mean():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    m = multilabel_metrics(probs, targets)
    assert torch.isnan(m["auc_c"][1]) and m["auc"].item() == pytest.approx(1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: thresholds on the CPU, probabilities on it")
def test_multilabel_metrics_with_cpu_thresholds_and_gpu_probabilities():
    probs, targets = torch.rand(20, 3, device="cuda"), (torch.rand(20, 3, device="cuda") > 0.5).float()
    m = multilabel_metrics(probs, targets, torch.full((3,), 0.4))
    assert m["f1_c"].device.type == "cuda"


def test_absent_classes_are_left_out_as_sklearn_does():
    """An external file with two of the seven classes: balanced accuracy and macro F1 equal scikit-learn's, and the
    report names the absent classes (the old mean over all seven counted each absent class as 0)."""
    g = torch.Generator().manual_seed(0)
    targets = torch.tensor([0] * 30 + [3] * 10)
    logits = torch.randn(40, 7, generator=g) + 1.2 * torch.nn.functional.one_hot(targets, 7)
    probs = logits.softmax(1)
    y, pred = targets.numpy(), probs.numpy().argmax(1)
    assert len(set(pred) - {0, 3}) > 0  # some predictions fall on absent classes
    m = standard_metrics(probs, targets)
    assert m["bacc"].item() == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["f1"].item() == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["bacc"].item() > 2 * m["sens_c"].nan_to_num(0.0).mean().item()  # not diluted by 5 absent classes
    assert torch.isnan(m["sens_c"][[1, 2, 4, 5, 6]]).all()
    srcmt = srcmt_metrics(probs, targets)  # SRC-MT's reference: scikit-learn per class, an absent class's recall 0
    recalls = [skm.recall_score(y == k, probs[:, k].numpy() >= 0.18, zero_division=0) for k in range(7)]
    assert srcmt["sens"].item() == pytest.approx(np.mean(recalls), abs=1e-6)
    report = format_report(probs, targets, ISIC_CLASSES, "external")
    assert "warning: no NV, BCC, BKL, DF, VASC in these targets" in report


def test_multilabel_finding_without_positives_is_left_out_of_the_f1_mean_unless_predicted():
    probs = torch.tensor([[0.9, 0.1, 0.8], [0.2, 0.1, 0.1], [0.7, 0.2, 0.3]])
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 0, 0]])  # finding 1 absent, never predicted
    m = multilabel_metrics(probs, targets)
    assert torch.isnan(m["f1_c"][1]) and m["f1"].item() == pytest.approx((1.0 + 1.0) / 2)
    predicted = multilabel_metrics(probs, targets, torch.tensor([0.5, 0.05, 0.5]))  # now finding 1 is predicted
    assert predicted["f1_c"][1].item() == 0.0 and predicted["f1"].item() == pytest.approx(2 / 3)
