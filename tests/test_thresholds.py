import pytest
import torch

from clcpmt.thresholds import (
    CAPRThreshold,
    ConfidenceStatus,
    CountStatus,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    binary_thresholds,
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
    pseudo, mask = select_pseudo_labels(probs, torch.tensor([[0.2, 0.2], [0.65, 0.8]]), "multi")
    assert pseudo.tolist() == [[1, 0], [0, 0], [0, 1]]
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    saturated = torch.tensor([[0.0, 0.3]])  # a sigmoid rounds to exactly 0 in fp32 below a logit of about -104
    thresholds = torch.tensor([[0.05, 0.05], [0.65, 0.8]])
    assert select_pseudo_labels(saturated, thresholds, "multi")[1].tolist() == [[True, False]]
    assert select_pseudo_labels(saturated, thresholds * torch.tensor([[0.0], [1.0]]), "multi")[1].tolist() == [
        [False, False]
    ]
    # a pair at or above the positive threshold is positive even where the negative threshold also holds it
    pseudo, mask = select_pseudo_labels(torch.tensor([[0.5]]), torch.tensor([[0.5], [0.5]]), "multi")
    assert pseudo.tolist() == [[1.0]] and mask.tolist() == [[True]]


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


def test_binary_thresholds_never_give_a_positive_below_half_nor_a_negative_above():
    t = binary_thresholds(torch.tensor([0.0, 0.95, 0.3]), torch.tensor([0.0, 0.95, 0.7]))
    assert torch.allclose(t, torch.tensor([[0.5, 0.05, 0.5], [0.5, 0.95, 0.7]]))


def _multilabel_stream(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A learned model on 200 unlabeled images: finding 0 common (40 %), finding 1 rare (5 %); positives get
    p ~ 0.97, negatives p ~ 0.02 (finding 1's positives only p ~ 0.6: learned slowly)."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.stack([torch.rand(200, generator=g) < 0.4, torch.rand(200, generator=g) < 0.05], dim=1)
    probs = torch.where(truth, torch.tensor([0.97, 0.6]), torch.tensor([0.02, 0.02]))
    batches = []
    for _ in range(steps):
        index = torch.randperm(200, generator=g)[:40]
        batches.append((probs[index], index))
    return batches


def test_flexmatch_multilabel_at_step_zero_labels_pairs_by_rounding_not_all_positive():
    rule = FlexMatchThreshold(num_classes=2, num_unlabeled=200, tau=0.95, task="multi")
    t = rule.thresholds(0.0)  # no confident pair yet: both classes of each finding at their floor
    assert torch.allclose(t, torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    probs = torch.tensor([[0.3, 0.1], [0.7, 0.45]])
    pseudo, mask = select_pseudo_labels(probs, t, "multi")
    assert pseudo.tolist() == [[0, 0], [1, 0]] and mask.all()  # not every pair positive (the old rule's T+ = 0)


def test_flexmatch_multilabel_after_many_steps_hand_counts():
    rule = FlexMatchThreshold(num_classes=2, num_unlabeled=200, tau=0.95, task="multi")
    probs_all = {}
    for probs, index in _multilabel_stream(100):
        rule.update(probs, index)
        probs_all.update(dict(zip(index.tolist(), probs.tolist(), strict=True)))
    p = torch.tensor([probs_all[i] for i in sorted(probs_all)])  # every sample seen (100 batches of 40 of 200)
    assert len(p) == 200
    pos, neg = (p >= 0.95).sum(0).float(), (p <= 0.05).sum(0).float()  # latest confident states = these
    unused = 200 - pos - neg
    norm = torch.maximum(torch.maximum(pos, neg), unused)
    m = lambda b: 0.95 * b / (2 - b)  # noqa: E731  FlexMatch's M, by hand
    expected = torch.stack([torch.clamp(1 - m(neg / norm), max=0.5), torch.clamp(m(pos / norm), min=0.5)])
    assert torch.allclose(rule.thresholds(0.0), expected)
    t = rule.thresholds(0.0)
    assert t[0, 1] == pytest.approx(0.05)  # the rare finding: negatives are the majority -> its T- is tau
    assert t[1, 1] == pytest.approx(0.5)  # never confident positives: T+ at the floor 0.5, never below
    assert (t[0] <= 0.5).all() and (t[1] >= 0.5).all()
    pseudo, _ = select_pseudo_labels(p, t, "multi")
    assert pseudo[:, 1].mean() < 0.1  # positive pseudo-labels near the rare finding's prevalence, not 94 %


def test_freematch_multilabel_starts_at_one_half_and_hand_values():
    rule = FreeMatchThreshold(num_classes=2, momentum=0.5, task="multi")
    assert torch.allclose(rule.thresholds(0.0), torch.full((2, 2), 0.5))  # 1/K for K = 2 classes per finding
    assert FreeMatchThreshold(num_classes=14, task="multi").global_conf.item() == 0.5  # not 1/C: max(p, 1-p) >= 0.5
    rule.update(torch.tensor([[0.9, 0.2], [0.7, 0.1]]), torch.arange(2))
    # global: 0.5·0.5 + 0.5·mean(0.9, 0.8, 0.7, 0.9) = 0.6625; p~ = 0.5·0.5 + 0.5·(0.8, 0.15) = (0.65, 0.325)
    assert rule.global_conf.item() == pytest.approx(0.6625)
    assert torch.allclose(rule.class_probs, torch.tensor([0.65, 0.325]))
    t = rule.thresholds(0.0)
    # finding 0: T+ = 0.6625, T- = 0.35/0.65·0.6625 = 0.3567 -> on p: negative <= 0.5, positive >= 0.6625
    # finding 1: T- = 0.6625, T+ = 0.325/0.675·0.6625 = 0.319 -> on p: negative <= 0.3375, positive >= 0.5
    assert torch.allclose(t, torch.tensor([[0.5, 1 - 0.6625], [0.6625, 0.5]]), atol=1e-6)


def test_freematch_multilabel_after_many_steps_rare_finding_never_below_the_negative_threshold():
    rule = FreeMatchThreshold(num_classes=2, momentum=0.99, task="multi")
    seen = {}
    for probs, index in _multilabel_stream(2000):
        rule.update(probs, index)
        seen.update(dict(zip(index.tolist(), probs.tolist(), strict=True)))
    p = torch.tensor(list(seen.values()))  # (200, 2); the EMA has forgotten its start (0.99^2000)
    assert rule.global_conf.item() == pytest.approx(torch.maximum(p, 1 - p).mean().item(), abs=0.01)
    assert torch.allclose(rule.class_probs, p.mean(0), atol=0.02)
    t = rule.thresholds(0.0)
    assert (t[0] < t[1]).all() and (t[1] >= 0.5).all()  # a positive is never given below the negative threshold
    assert t[0, 1] < 0.1 and t[1, 1] == pytest.approx(0.5)  # rare finding: strict negatives, positives at 0.5


def test_fixed_negative_threshold_never_above_the_positive_one():
    t = FixedThreshold(2, tau=0.3, task="multi", tau_negative=0.5).thresholds(0.0)  # 1 - 0.5 = 0.5 > tau = 0.3
    assert torch.allclose(t, torch.full((2, 2), 0.3))
    pseudo, mask = select_pseudo_labels(torch.tensor([[0.4, 0.2]]), t, "multi")
    assert pseudo.tolist() == [[1.0, 0.0]] and mask.all()  # p = 0.4 >= 0.3 is a positive, 0.2 a negative


def test_debias_probs_hand_values_and_running_mean():
    from clcpmt.thresholds import Debias, debias_probs

    p = torch.tensor([[0.6, 0.3, 0.1]])
    # p / p_bar = (1.2, 1.0, 0.5), normalised by 2.7
    out = debias_probs(p, torch.tensor([0.5, 0.3, 0.2]), 1.0)
    assert torch.allclose(out, torch.tensor([[1.2, 1.0, 0.5]]) / 2.7, atol=1e-6)
    # strength 0.5: p / sqrt(p_bar) = (0.8485, 0.5477, 0.2236), normalised by 1.6198
    half = debias_probs(p, torch.tensor([0.5, 0.3, 0.2]), 0.5)
    assert torch.allclose(half, torch.tensor([[0.8485, 0.5477, 0.2236]]) / 1.6198, atol=1e-4)
    assert torch.allclose(debias_probs(p, torch.full((3,), 1 / 3), 1.0), p, atol=1e-6)  # uniform p_bar: unchanged
    d = Debias(3, strength=1.0, momentum=0.9)
    assert torch.allclose(d.class_probs, torch.full((3,), 1 / 3))  # before any update: uniform
    x, y = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.2, 0.6])
    d.update(torch.stack([x, x]))  # bias-corrected EMA: after one batch, exactly its mean
    assert torch.allclose(d.class_probs, x, atol=1e-6)
    d.update(torch.stack([y, y, y]))  # (0.9 · 0.1 x + 0.1 y) / (1 - 0.81)
    expected = (0.09 * x + 0.1 * y) / 0.19
    assert torch.allclose(d.class_probs, expected, atol=1e-6)
    assert torch.allclose(d(p), debias_probs(p, expected), atol=1e-6)
    fresh = Debias(3, momentum=0.9)
    fresh.load_state_dict(d.state_dict())  # the running mean and its step count are saved with the method
    assert torch.allclose(fresh.class_probs, expected)
    never = Debias(2, momentum=0.5)
    never.update(torch.tensor([[1.0, 0.0]]))  # a class never predicted: floored, its log stays finite
    assert torch.isfinite(never(torch.tensor([[0.5, 0.5]]))).all()


def test_debias_towards_the_labeled_prior_is_distribution_alignment():
    """target pi: p · pi / p_bar renormalised (ReMixMatch). p = (0.6, 0.3, 0.1), p_bar = (0.5, 0.3, 0.2),
    pi = (0.7, 0.2, 0.1): (0.84, 0.2, 0.05) / 1.09. A teacher whose mean already is pi is left unchanged."""
    from clcpmt.thresholds import Debias

    p, pi = torch.tensor([[0.6, 0.3, 0.1]]), torch.tensor([0.7, 0.2, 0.1])
    d = Debias(3, strength=1.0, momentum=0.9, target=pi)
    d.update(torch.tensor([[0.5, 0.3, 0.2]]))  # one batch: p_bar is exactly its mean
    assert torch.allclose(d(p), torch.tensor([[0.84, 0.2, 0.05]]) / 1.09, atol=1e-6)
    aligned = Debias(3, target=pi)
    aligned.update(pi[None])
    assert torch.allclose(aligned(p), p, atol=1e-6)
    fresh = Debias(3, target=torch.full((3,), 1 / 3))  # as rebuilt from a checkpoint: pi comes with the state
    fresh.load_state_dict(d.state_dict())
    assert torch.equal(fresh.target, pi) and torch.allclose(fresh(p), d(p))
    assert "target" not in Debias(3).state_dict()  # uniform: no target saved, earlier checkpoints load as before
