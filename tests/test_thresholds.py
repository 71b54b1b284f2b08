import pytest
import torch

from clcpmt.thresholds import (
    CAPRThreshold,
    ConfidenceStatus,
    CountStatus,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    capr_thresholds,
    flexmatch_thresholds,
    freematch_thresholds,
    select_pseudo_labels,
    warp,
)


def test_pure_threshold_rules_hand_values():
    beta = torch.tensor([1.0, 0.5, 0.9, 0.0])
    assert torch.allclose(warp(beta), torch.tensor([1.0, 1 / 3, 0.9 / 1.1, 0.0]))
    # tau·M(beta) = 0.95, 0.3167, 0.7773, 0 -> clipped to [0.5, 0.95]
    assert torch.allclose(capr_thresholds(beta, 0.95, 0.5), torch.tensor([0.95, 0.5, 0.95 * 0.9 / 1.1, 0.5]))
    assert torch.allclose(flexmatch_thresholds(beta, 0.95), torch.tensor([0.95, 0.95 / 3, 0.95 * 0.9 / 1.1, 0.0]))
    assert torch.allclose(freematch_thresholds(torch.tensor(0.8), torch.tensor([0.2, 0.4])), torch.tensor([0.4, 0.8]))


def test_confidence_status_update_hand_value():
    status = ConfidenceStatus(num_classes=3, momentum=0.9)
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    status.update(probs, torch.arange(3))
    # class 0: mean(0.8, 0.6) = 0.7; class 1: 0.7; class 2 absent keeps 1/3
    expected = torch.tensor([0.9 / 3 + 0.1 * 0.7, 0.9 / 3 + 0.1 * 0.7, 1 / 3])
    assert torch.allclose(status.sigma, expected)
    assert torch.allclose(status.beta(), expected / expected.max())


def test_confidence_status_multilabel_uses_findings_above_half():
    status = ConfidenceStatus(num_classes=2, momentum=0.5, task="multi")
    status.update(torch.tensor([[0.9, 0.2], [0.7, 0.4]]), torch.arange(2))
    # finding 0: mean(0.9, 0.7) = 0.8; finding 1: no p >= 0.5, keeps 1/2
    assert torch.allclose(status.sigma, torch.tensor([0.25 + 0.4, 0.5]))


def test_count_status_flexmatch_table_and_unused_in_max():
    status = CountStatus(num_classes=2, num_unlabeled=6, tau=0.9)
    probs = torch.tensor([[0.95, 0.05], [0.5, 0.5], [0.05, 0.95]])
    status.update(probs, torch.tensor([0, 1, 2]))
    assert status.table.tolist() == [0, -1, 1, -1, -1, -1]
    # counts (1, 1), unused 4 -> beta = counts / 4
    assert torch.allclose(status.beta(), torch.tensor([0.25, 0.25]))
    status.update(torch.tensor([[0.99, 0.01]] * 4), torch.tensor([1, 3, 4, 5]))
    # counts (5, 1), unused 0 -> beta = counts / 5
    assert torch.allclose(status.beta(), torch.tensor([1.0, 0.2]))
    status.update(torch.tensor([[0.6, 0.4]]), torch.tensor([0]))  # not confident: keeps its last confident label
    assert status.table[0].item() == 0


def test_count_status_incremental_counts_equal_a_recount():
    g = torch.Generator().manual_seed(0)
    status = CountStatus(num_classes=5, num_unlabeled=50, tau=0.5)
    for _ in range(40):
        probs = torch.softmax(torch.randn(12, 5, generator=g) * 3, dim=1)
        status.update(probs, torch.randint(0, 50, (12,), generator=g))  # duplicates within a batch included
        recount = torch.bincount(status.table[status.table >= 0], minlength=5)
        assert torch.equal(status.counts, recount)
    assert (status.table >= 0).sum() > 25


def test_flexmatch_starts_at_zero_and_follows_counts():
    rule = FlexMatchThreshold(num_classes=2, num_unlabeled=4, tau=0.95)
    assert rule.thresholds(0.0).tolist() == [0.0, 0.0]  # FlexMatch accepts everything at step 0
    rule.update(torch.tensor([[0.99, 0.01]] * 4), torch.arange(4))
    assert torch.allclose(rule.thresholds(0.0), torch.tensor([0.95, 0.0]))


def test_freematch_hand_values():
    rule = FreeMatchThreshold(num_classes=2, momentum=0.5)
    rule.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.arange(2))
    # global: 0.5·0.5 + 0.5·mean(0.9, 0.7) = 0.65; class probs: 0.5·0.5 + 0.5·(0.6, 0.4) = (0.55, 0.45)
    assert rule.global_conf.item() == pytest.approx(0.65)
    assert torch.allclose(rule.thresholds(0.0), torch.tensor([0.65, 0.65 * 0.45 / 0.55]))
    # argmax histogram of the batch (1/2, 1/2): EMA 0.5·0.5 + 0.5·0.5 = 0.5 each; then a batch of class 0 only
    assert torch.allclose(rule.class_hist, torch.tensor([0.5, 0.5]))
    rule.update(torch.tensor([[0.8, 0.2]]), torch.arange(1))
    assert torch.allclose(rule.class_hist, torch.tensor([0.75, 0.25]))


def _train_capr(rule: CAPRThreshold, steps: int) -> None:
    """Class 0 is learned well (confident, frequent), class 1 slowly (low confidence), class 2 in between."""
    for _ in range(steps):
        probs = torch.tensor([[0.98, 0.01, 0.01]] * 6 + [[0.3, 0.6, 0.1]] * 2 + [[0.1, 0.1, 0.8]] * 2)
        rule.update(probs, torch.arange(10))


@pytest.mark.parametrize("status", ["confidence", "count"])
def test_capr_warmup_then_lower_for_slow_class_never_below_floor(status):
    rule = CAPRThreshold(
        num_classes=3, num_unlabeled=10, tau=0.95, tau_min=0.5, momentum=0.9, warmup_epochs=2, status=status
    )
    _train_capr(rule, 50)
    assert rule.thresholds(1.9).tolist() == pytest.approx([0.95] * 3)  # warm-up holds every class at tau
    t = rule.thresholds(2.0)
    assert t[0].item() == pytest.approx(0.95)
    assert t[1] < t[0] and t[2] < t[0]
    assert (t >= 0.5).all() and (t <= 0.95).all()
    if status == "confidence":
        assert t[1] < t[2]  # the least confident class gets the lowest threshold


def test_capr_confidence_collects_statistics_during_warmup():
    rule = CAPRThreshold(num_classes=3, num_unlabeled=10, momentum=0.9, warmup_epochs=100)
    before = rule.status.sigma.clone()
    _train_capr(rule, 1)
    assert not torch.equal(before, rule.status.sigma)


def test_capr_with_beta_one_equals_fixmatch_mask():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(64, 5) * 4, dim=1)
    capr = capr_thresholds(torch.ones(5), tau=0.95, tau_min=0.5)
    fixed = FixedThreshold(5, 0.95).thresholds(0.0)
    p1, m1 = select_pseudo_labels(probs, capr)
    p2, m2 = select_pseudo_labels(probs, fixed)
    assert torch.equal(p1, p2) and torch.equal(m1, m2) and m1.any() and not m1.all()


def test_select_pseudo_labels_single_and_multi():
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])
    pseudo, mask = select_pseudo_labels(probs, torch.tensor([0.65, 0.8]))
    assert pseudo.tolist() == [0, 1, 1] and mask.tolist() == [True, False, True]
    pseudo, mask = select_pseudo_labels(probs, torch.tensor([0.65, 0.8]), "multi", negative_threshold=0.2)
    assert pseudo.tolist() == [[1, 0], [0, 0], [0, 1]]
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    saturated = torch.tensor([[0.0, 0.3]])  # a sigmoid rounds to exactly 0 in fp32 below a logit of about -104
    assert select_pseudo_labels(saturated, torch.tensor([0.65, 0.8]), "multi", 0.05)[1].tolist() == [[True, False]]
    assert select_pseudo_labels(saturated, torch.tensor([0.65, 0.8]), "multi", 0.0)[1].tolist() == [[False, False]]


@pytest.mark.parametrize(
    "make",
    [
        lambda: CAPRThreshold(3, 10, momentum=0.9, status="confidence"),
        lambda: CAPRThreshold(3, 10, momentum=0.9, status="count"),
        lambda: FlexMatchThreshold(3, 10),
        lambda: FreeMatchThreshold(3, momentum=0.9),
    ],
)
def test_rule_state_round_trips_through_state_dict(make):
    rule = make()
    _train_capr(rule, 5)
    fresh = make()
    assert not torch.equal(fresh.thresholds(10.0), rule.thresholds(10.0))
    fresh.load_state_dict(rule.state_dict())
    assert torch.equal(fresh.thresholds(10.0), rule.thresholds(10.0))


def test_count_status_multilabel_incremental_and_unused():
    status = CountStatus(num_classes=2, num_unlabeled=4, tau=0.9, task="multi")
    status.update(torch.tensor([[0.95, 0.5], [0.05, 0.5], [0.5, 0.5]]), torch.tensor([0, 1, 2]))
    # sample 0: finding 0 positive; sample 1: finding 0 negative; sample 2 and 3 never confident
    assert status.counts.tolist() == [1, 0] and status.unused.item() == 2
    assert torch.allclose(status.beta(), torch.tensor([0.5, 0.0]))
    status.update(torch.tensor([[0.5, 0.97], [0.5, 0.5]]), torch.tensor([0, 3]))  # sample 0 keeps finding 0
    assert status.table[0].tolist() == [1, 1] and status.counts.tolist() == [1, 1] and status.unused.item() == 2
