import math

import pytest
import torch
import torch.nn.functional as F

from clcpmt.losses import (
    SDEBank,
    class_prior,
    consistency_loss,
    fairness_loss,
    probabilities,
    pseudo_label_loss,
    ramp_up,
    supcon_loss,
    supervised_loss,
)
from clcpmt.model import ema_update


def test_supervised_loss_hand_value():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = (-math.log(math.e**2 / (math.e**2 + 2)) - math.log(math.e / (math.e + 2))) / 2
    assert supervised_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)
    # multi-label: BCE on sigmoid, mean over all pairs
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    bce = [
        -math.log(sig(2)),
        -math.log(1 - sig(0)),
        -math.log(1 - sig(0)),
        -math.log(1 - sig(0)),
        -math.log(sig(1)),
        -math.log(sig(0)),
    ]
    assert supervised_loss(logits, targets, "multi").item() == pytest.approx(sum(bce) / 6, rel=1e-6)


def test_class_prior_counts_and_keeps_every_class_between_one_and_n_minus_one_images():
    assert torch.allclose(class_prior(torch.tensor([0, 0, 0, 1]), 3), torch.tensor([0.75, 0.25, 0.25]))
    multi = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # finding 0 in every image
    assert torch.allclose(class_prior(multi, 2, "multi"), torch.tensor([0.75, 0.25]))


def test_logit_adjustment_hand_values():
    prior = torch.tensor([0.75, 0.25])
    zero = torch.zeros(1, 2)
    # softmax(0 + log pi) = pi: the loss of class 1 is -log 0.25
    assert supervised_loss(zero, torch.tensor([1]), "single", prior, "logit_adjust").item() == pytest.approx(
        math.log(4), rel=1e-6
    )
    # strength 0.5: softmax(0.5 log pi) is proportional to sqrt(pi)
    p1 = math.sqrt(0.25) / (math.sqrt(0.75) + math.sqrt(0.25))
    half = supervised_loss(zero, torch.tensor([1]), "single", prior, "logit_adjust", 0.5).item()
    assert half == pytest.approx(-math.log(p1), rel=1e-6)
    # multi-label, per finding: sigmoid(0 + log(0.2 / 0.8)) = 0.2
    multi = supervised_loss(zero, torch.tensor([[1.0, 0.0]]), "multi", torch.tensor([0.2, 0.2]), "logit_adjust")
    assert multi.item() == pytest.approx((-math.log(0.2) - math.log(0.8)) / 2, rel=1e-6)


def test_class_weight_hand_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    # weights 1/pi = (1.25, 5); CE's weighted mean divides by the weights of the batch's targets
    ce0, ce1 = -math.log(math.e**2 / (math.e**2 + 1)), math.log(2)
    got = supervised_loss(logits, torch.tensor([0, 1]), "single", torch.tensor([0.8, 0.2]), "weights").item()
    assert got == pytest.approx((1.25 * ce0 + 5 * ce1) / 6.25, rel=1e-6)
    # multi: positives of finding c weighted by (1 - pi_c) / pi_c = (4, 1); negatives by 1
    got = supervised_loss(torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), "multi", torch.tensor([0.2, 0.5]), "weights")
    assert got.item() == pytest.approx((4 * math.log(2) + math.log(2)) / 2, rel=1e-6)
    sqrt = supervised_loss(torch.zeros(1, 1), torch.tensor([[1.0]]), "multi", torch.tensor([0.2]), "weights", 0.5)
    assert sqrt.item() == pytest.approx(2 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("balance", ["weights", "logit_adjust"])
def test_class_balance_with_a_uniform_prior_is_the_plain_loss(balance):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    plain = supervised_loss(logits, y)
    assert supervised_loss(logits, y, "single", torch.full((3,), 1 / 3), balance).item() == pytest.approx(plain.item())
    ym = (torch.rand(6, 3, generator=g) > 0.5).float()
    plain = supervised_loss(logits, ym, "multi")
    assert supervised_loss(logits, ym, "multi", torch.full((3,), 0.5), balance).item() == pytest.approx(plain.item())


def test_class_balance_errors():
    with pytest.raises(ValueError, match="unknown balance 'focal'"):
        supervised_loss(torch.zeros(1, 2), torch.tensor([0]), balance="focal", prior=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="needs the labeled prior"):
        supervised_loss(torch.zeros(1, 2), torch.tensor([0]), balance="weights")


def test_consistency_loss_hand_value():
    p_s = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    p_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # sample 1: 0.25 + 0.25; sample 2: 0 -> mean 0.25
    assert consistency_loss(p_s, p_t).item() == pytest.approx(0.25)


def _supcon_reference(z, labels, tau):
    """Plain loops, straight from method.md §3.3."""
    n, losses = len(z), []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(n) if a != i)
        losses.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def test_supcon_hand_reference_and_anchor_without_positive_left_out():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(7, 5), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # classes 2 and 3 have no positive: left out of the mean
    assert supcon_loss(z, labels, 0.1).item() == pytest.approx(_supcon_reference(z, labels, 0.1), rel=1e-5)


def test_supcon_matches_pytorch_metric_learning():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(1)
    for _ in range(5):
        z = F.normalize(torch.randn(24, 16), dim=1)
        labels = torch.randint(0, 4, (24,))
        ours = supcon_loss(z, labels, temperature=0.1)
        theirs = pml.SupConLoss(temperature=0.1)(z, labels)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)


def test_supcon_no_positive_at_all_is_zero_with_graph():
    z = F.normalize(torch.randn(3, 4), dim=1).requires_grad_(True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0 and loss.requires_grad


def test_supcon_fp32_under_bf16_autocast_and_large_logits():
    z = F.normalize(torch.randn(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = supcon_loss(z, labels, temperature=0.01)  # exp(100): overflows without the row-max trick
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(supcon_loss(z.double(), labels, 0.01).item(), rel=1e-4)


def test_supcon_multilabel_jaccard_weights_and_no_finding():
    # 4 views: {A}, {A,B}, {} (No Finding), {} (No Finding)
    labels = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 0]])
    torch.manual_seed(2)
    z = F.normalize(torch.randn(4, 3), dim=1)
    tau = 0.1
    sim = (z @ z.T / tau).tolist()

    def log_prob(i, p):
        denom = sum(math.exp(sim[i][a]) for a in range(4) if a != i)
        return sim[i][p] - math.log(denom)

    # anchor 0: positive 1 with Jaccard 1/2; anchor 1: positive 0 with 1/2; anchors 2, 3: each other with 1
    per_anchor = [-log_prob(0, 1), -log_prob(1, 0), -log_prob(2, 3), -log_prob(3, 2)]
    expected = sum(per_anchor) / 4  # a single weighted positive: weight cancels in the weighted mean
    assert supcon_loss(z, labels, tau, task="multi").item() == pytest.approx(expected, rel=1e-5)
    # a finding set with two partial positives: weights 1/2 and 1/3 enter the weighted mean
    labels = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 1]])
    z = F.normalize(torch.randn(3, 3), dim=1)
    sim = (z @ z.T / tau).tolist()

    def lp(i, p):
        return sim[i][p] - math.log(sum(math.exp(sim[i][a]) for a in range(3) if a != i))

    w = {(0, 1): 1 / 2, (0, 2): 1 / 3, (1, 0): 1 / 2, (1, 2): 1 / 2, (2, 0): 1 / 3, (2, 1): 1 / 2}
    anchors = [
        -sum(w[(i, p)] * lp(i, p) for p in range(3) if p != i) / sum(w[(i, p)] for p in range(3) if p != i)
        for i in range(3)
    ]
    assert supcon_loss(z, labels, tau, task="multi").item() == pytest.approx(sum(anchors) / 3, rel=1e-5)


def test_supcon_with_bank_matches_pytorch_metric_learning_cross_batch_memory():
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    torch.manual_seed(3)
    bank_z, bank_y = F.normalize(torch.randn(20, 16), dim=1), torch.randint(0, 5, (20,))
    z, labels = F.normalize(torch.randn(12, 16), dim=1), torch.randint(0, 5, (12,))
    # their memory: the 20 earlier rows, then this batch (enqueued, self-comparisons removed): keys = batch + bank
    xbm = pml.CrossBatchMemory(pml.SupConLoss(temperature=0.1), embedding_size=16, memory_size=32)
    xbm.embedding_memory[:20], xbm.label_memory[:20], xbm.queue_idx = bank_z, bank_y, 20
    theirs = xbm(z, labels)
    ours = supcon_loss(z, labels, 0.1, bank_z=bank_z, bank_labels=bank_y)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-4)
    assert ours.item() != pytest.approx(supcon_loss(z, labels, 0.1).item(), rel=1e-3)  # the bank matters


def test_supcon_multilabel_bank_hand_reference_and_no_gradient_into_the_bank():
    # batch: {A} and {} (No Finding); bank: {A,B}, {}, {B}. Anchor 0's positive is only in the bank (Jaccard 1/2).
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bank_y = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    torch.manual_seed(4)
    z = F.normalize(torch.randn(2, 3), dim=1).requires_grad_(True)
    bank_z = F.normalize(torch.randn(3, 3), dim=1).requires_grad_(True)
    keys, tau = torch.cat([z, bank_z]).tolist(), 0.1

    def lp(i, k):  # log softmax of key k for anchor i over every key but i itself
        sim = [sum(a * b for a, b in zip(keys[i], keys[j], strict=True)) / tau for j in range(5)]
        return sim[k] - math.log(sum(math.exp(sim[j]) for j in range(5) if j != i))

    anchor0 = -lp(0, 2)  # one positive (bank row 0, weight 1/2): the weight cancels in the weighted mean
    anchor1 = -lp(1, 3)  # No Finding: bank row 1
    loss = supcon_loss(z, labels, tau, task="multi", bank_z=bank_z, bank_labels=bank_y)
    assert loss.item() == pytest.approx((anchor0 + anchor1) / 2, rel=1e-5)
    assert supcon_loss(z, labels, tau, task="multi").item() == 0.0  # without the bank: no anchor has a positive
    loss.backward()
    assert z.grad.abs().sum() > 0 and bank_z.grad is None


def test_sde_bank_fills_wraps_and_round_trips_its_state():
    bank = SDEBank(size=5, dim=2, num_classes=3, task="multi")
    assert bank.contents()[0].shape == (0, 2)
    z = torch.arange(16.0).reshape(8, 2)
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])]
    bank.push(z[:3], y[:3])
    kept_z, kept_y = bank.contents()
    assert torch.equal(kept_z, z[:3]) and torch.equal(kept_y, y[:3])
    bank.push(z[3:7], y[3:7])  # 7 rows into 5: rows 5, 6 overwrite the oldest (0, 1)
    kept_z, kept_y = bank.contents()
    assert torch.equal(kept_z, z[[5, 6, 2, 3, 4]]) and torch.equal(kept_y, y[[5, 6, 2, 3, 4]])
    copy = SDEBank(size=5, dim=2, num_classes=3, task="multi")
    copy.load_state_dict(bank.state_dict())
    bank.push(z[7:], y[7:])
    copy.push(z[7:], y[7:])  # the position came with the state: both overwrite row 2
    assert torch.equal(copy.contents()[0], bank.contents()[0]) and torch.equal(bank.contents()[0][2], z[7])
    single = SDEBank(size=4, dim=2, num_classes=3)
    single.push(z[:6], torch.tensor([0, 1, 2, 0, 1, 2]))  # a batch larger than the bank keeps its last rows
    assert torch.equal(single.contents()[1], torch.tensor([2, 0, 1, 2]))


def test_pseudo_label_loss_averages_over_all_unlabeled_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    pseudo = torch.tensor([0, 1, 0])
    mask = torch.tensor([True, False, True])
    ce0 = -math.log(math.e**2 / (math.e**2 + 1))
    ce2 = -math.log(1 / (1 + math.e**3))
    assert pseudo_label_loss(logits, pseudo, mask).item() == pytest.approx((ce0 + ce2) / 3, rel=1e-6)
    # multi-label: masked BCE over the kept pairs, divided by all pairs
    pseudo_m = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    mask_m = torch.tensor([[True, False], [False, False], [False, True]])
    bce = -math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(-3)))
    assert pseudo_label_loss(logits, pseudo_m, mask_m, "multi").item() == pytest.approx(bce / 6, rel=1e-6)


def test_ramp_up_values():
    assert ramp_up(0, 30) == pytest.approx(math.exp(-5))
    assert ramp_up(15, 30) == pytest.approx(math.exp(-1.25))
    assert ramp_up(30, 30) == 1.0 and ramp_up(100, 30) == 1.0 and ramp_up(0, 0) == 1.0


def test_probabilities_softmax_and_sigmoid():
    logits = torch.tensor([[0.0, 0.0]])
    assert probabilities(logits).tolist() == [[0.5, 0.5]]
    assert probabilities(torch.tensor([[0.0, 100.0]]), "multi").tolist() == [[0.5, 1.0]]


def test_ema_update_matches_formula_with_warm_start():
    torch.manual_seed(0)
    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        for p in (*student.parameters(), *teacher.parameters()):
            p.normal_()
        student.running_mean.fill_(2.0)
        student.num_batches_tracked.fill_(7)
    t0 = [p.clone() for p in teacher.parameters()]
    assert ema_update(teacher, student, decay=0.99, step=0) == 0.0  # step 0: the teacher becomes the student
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))
    assert teacher.running_mean.tolist() == [2.0, 2.0, 2.0] and teacher.num_batches_tracked.item() == 7
    with torch.no_grad():
        for p, q in zip(teacher.parameters(), t0, strict=True):
            p.copy_(q)
    alpha = ema_update(teacher, student, decay=0.99, step=9)  # min(1 - 1/10, 0.99) = 0.9
    assert alpha == pytest.approx(0.9)
    for t, old, s in zip(teacher.parameters(), t0, student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * old + 0.1 * s)
    assert ema_update(teacher, student, decay=0.99, step=10_000) == 0.99


def test_fairness_loss_hand_value():
    # a = SumNorm((0.6, 0.4) / (0.75, 0.25)) = (1/3, 2/3); kept student probs (0.9, 0.1), (0.2, 0.8): argmax
    # histogram (1/2, 1/2), mean (0.55, 0.45), b = SumNorm(mean / histogram) = (0.55, 0.45);
    # L_f = 1/3 log 0.55 + 2/3 log 0.45 = -0.731618
    logits = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).log()
    loss = fairness_loss(logits, torch.tensor([0.6, 0.4]), torch.tensor([0.75, 0.25]))
    assert loss.item() == pytest.approx(math.log(0.55) / 3 + 2 * math.log(0.45) / 3, abs=1e-6)


def test_fairness_loss_treats_empty_classes_as_zero_and_sends_gradient_to_the_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], requires_grad=True)  # class 2 never predicted
    hist = torch.tensor([0.5, 0.5, 0.0])  # and never in the EMA histogram: 1/0 counts as 0, no NaN
    loss = fairness_loss(logits, torch.tensor([0.5, 0.3, 0.2]), hist)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
