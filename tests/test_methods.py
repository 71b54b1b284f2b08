import copy

import pytest
import torch
from torch import nn

from clcpmt.methods import METHODS, Progress, SSLBatch, build_method
from clcpmt.model import Student


class TinyBackbone(nn.Module):
    """A few-parameter stand-in for a timm backbone (has BatchNorm, like the real ones)."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


C = 4
LOW = dict(tau=0.3, tau_min=0.0, warmup_epochs=0.0, rampup_epochs=0.0)  # accept pseudo-labels: every term active
LATE = Progress(step=100, epoch=50.0)


def make_batch(seed: int = 0, task: str = "single") -> SSLBatch:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0, 0, 1, 1, 2, 3])
    if task == "multi":
        y = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]).float()
    return SSLBatch(
        x1=torch.randn(6, 3, 8, 8, generator=g),
        x2=torch.randn(6, 3, 8, 8, generator=g),
        y=y,
        u_weak=torch.randn(10, 3, 8, 8, generator=g),
        u_student=torch.randn(10, 3, 8, 8, generator=g),
        u_index=torch.arange(10),
        u_hidden=torch.randint(0, C, (10,), generator=g),
    )


def make_models(seed: int = 0) -> tuple[Student, Student]:
    torch.manual_seed(seed)
    student = Student(TinyBackbone(), C, proj_dim=4)
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # a teacher that differs from the student, as after some training
        for p in teacher.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return student, teacher.requires_grad_(False).eval()


def student_grads(name: str, eval_bn: bool = False, task: str = "single", **hp) -> list[torch.Tensor]:
    student, teacher = make_models()
    student.train(not eval_bn)
    method = build_method(name, C, num_unlabeled=10, task=task, **{**LOW, **hp})
    out = method.step(make_batch(task=task), student, teacher, LATE)
    out.loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in student.parameters()]


def differs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.allclose(x, y, atol=1e-7) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("task", ["single", "multi"])
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_a_finite_loss_and_leaves_the_teacher_alone(name, task):
    student, teacher = make_models()
    teacher.requires_grad_(True)  # even if someone forgets requires_grad_(False), no gradient may reach it
    before = copy.deepcopy(teacher.state_dict())
    method = build_method(name, C, num_unlabeled=10, task=task, **LOW)
    out = method.step(make_batch(task=task), student, teacher, LATE)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


TERMS = [  # (method, weight that switches one unlabeled/contrastive term off)
    ("mean_teacher", "lambda_mt"),
    ("mt_sde", "lambda_mt"),
    ("mt_sde", "lambda_sde"),
    ("mt_capr", "lambda_mt"),
    ("mt_capr", "lambda_pl"),
    ("fixmatch", "lambda_pl"),
    ("flexmatch", "lambda_pl"),
    ("freematch", "lambda_pl"),
    ("clcp_mt", "lambda_mt"),
    ("clcp_mt", "lambda_sde"),
    ("clcp_mt", "lambda_pl"),
]


@pytest.mark.parametrize("task", ["single", "multi"])
@pytest.mark.parametrize(("name", "weight"), TERMS)
def test_each_term_sends_nonzero_gradient_to_the_student(name, weight, task):
    """USB's Mean Teacher once had a zero-gradient consistency loss: each term must change the student's gradient."""
    with_term = student_grads(name, task=task, **{weight: 1.0})
    without_term = student_grads(name, task=task, **{weight: 0.0})
    assert differs(with_term, without_term)


def test_freematch_fairness_term_sends_gradient_to_the_student():
    # the models of seed 5 predict two classes on u^s; with one class only, b is one-hot and L_f is flat (as published)
    grads = []
    for lam in (1.0, 0.0):
        student, teacher = make_models(seed=5)
        out = build_method("freematch", C, num_unlabeled=10, lambda_fair=lam, **LOW).step(
            make_batch(), student, teacher, LATE
        )
        out.loss.backward()
        grads.append([p.grad.clone() for p in student.parameters() if p.grad is not None])
    assert torch.isfinite(out.logs["loss/fair"]) and differs(*grads)


def test_clcp_mt_with_zero_weights_equals_supervised():
    # eval-mode BatchNorm: the unlabeled views that CLCP-MT adds to the student's batch then change nothing
    zero = student_grads("clcp_mt", eval_bn=True, lambda_mt=0.0, lambda_sde=0.0, lambda_pl=0.0)
    sup = student_grads("supervised", eval_bn=True)
    assert not differs(zero, sup)


def test_mt_sde_with_zero_sde_weight_equals_mean_teacher():
    assert not differs(student_grads("mt_sde", lambda_sde=0.0), student_grads("mean_teacher"))


def test_pseudo_labels_come_from_the_teacher_for_capr():
    """Changing the teacher changes CAPR's pseudo-labels; FixMatch's come from the student's own weak view."""
    student, teacher = make_models()
    _, other_teacher = make_models(seed=5)
    b = make_batch()
    masks = {}
    for name in ("clcp_mt", "fixmatch"):
        for tag, t in (("a", teacher), ("b", other_teacher)):
            out = build_method(name, C, num_unlabeled=10, **LOW).step(b, student, t, LATE)
            masks[name, tag] = out.pseudo
    assert not torch.equal(masks["clcp_mt", "a"], masks["clcp_mt", "b"])
    assert torch.equal(masks["fixmatch", "a"], masks["fixmatch", "b"])


def test_method_state_round_trips_through_state_dict():
    student, teacher = make_models()
    method = build_method("clcp_mt", C, num_unlabeled=10, momentum=0.5)
    method.step(make_batch(), student, teacher, LATE)
    fresh = build_method("clcp_mt", C, num_unlabeled=10, momentum=0.5)
    assert not torch.equal(fresh.rule.status.sigma, method.rule.status.sigma)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.rule.status.sigma, method.rule.status.sigma)


@pytest.mark.parametrize("task", ["single", "multi"])
@pytest.mark.parametrize("balance", ["weights", "logit_adjust"])
def test_class_balance_changes_the_student_gradient_and_its_prior_is_saved(balance, task):
    prior = torch.tensor([0.5, 0.3, 0.15, 0.05])
    plain = student_grads("mean_teacher", task=task)
    assert differs(student_grads("mean_teacher", task=task, class_balance=balance, prior=prior), plain)
    method = build_method("mean_teacher", C, task=task, class_balance=balance, prior=prior)
    fresh = build_method("mean_teacher", C, task=task, class_balance=balance)  # as when loading a checkpoint
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.prior, prior)
    assert "prior" not in build_method("mean_teacher", C).state_dict()  # older checkpoints still load


@pytest.mark.parametrize("task", ["single", "multi"])
def test_sde_bank_holds_earlier_labeled_views_and_is_saved(task):
    student, teacher = make_models()
    method = build_method("clcp_mt", C, num_unlabeled=10, task=task, sde_bank=30, proj_dim=4, **LOW)
    plain = build_method("clcp_mt", C, num_unlabeled=10, task=task, proj_dim=4, **LOW)
    first = method.step(make_batch(0, task), student, teacher, LATE).logs["loss/sde"]
    assert first == plain.step(make_batch(0, task), student, teacher, LATE).logs["loss/sde"]  # bank empty at step 1
    assert method.bank.contents()[0].shape == (12, 4)  # both views of the 6 labeled images
    out = method.step(make_batch(1, task), student, teacher, LATE)
    assert out.logs["loss/sde"] != plain.step(make_batch(1, task), student, teacher, LATE).logs["loss/sde"]
    fresh = build_method("clcp_mt", C, num_unlabeled=10, task=task, sde_bank=30, proj_dim=4)
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(fresh.bank.z, method.bank.z) and int(fresh.bank.filled) == 24
    assert build_method("mean_teacher", C, sde_bank=30).bank is None  # no SDE, no bank
    assert not any(k.startswith("bank") for k in plain.state_dict())  # older checkpoints still load


def test_build_method_rejects_unknown_name_with_close_match():
    with pytest.raises(ValueError, match="unknown method 'clcpmt'.*did you mean 'clcp_mt'"):
        build_method("clcpmt", C)


class Recorder(nn.Module):
    """Wraps a model and records the number of images of each forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.rows.append(x.shape[0])
        return self.model(x)


# B_L = 6 labeled, B_U = 10 unlabeled (make_batch): one student forward, at most one teacher forward, on the views
# each method uses and no other (the FixMatch family trains on one labeled view, as published)
FORWARD_ROWS = {
    "supervised": ([12], []),
    "mean_teacher": ([22], [16]),
    "mt_sde": ([22], [16]),
    "mt_capr": ([22], [16]),
    "fixmatch": ([26], []),
    "flexmatch": ([26], []),
    "freematch": ([26], []),
    "clcp_mt": ([22], [16]),
}


@pytest.mark.parametrize("name", METHODS)
def test_each_method_forwards_only_the_views_it_uses(name):
    assert set(FORWARD_ROWS) == set(METHODS)
    student, teacher = make_models()
    student, teacher = Recorder(student), Recorder(teacher)
    method = build_method(name, C, num_unlabeled=10, **LOW)
    b = make_batch()
    if method.labeled_views == 1:
        b.x2 = None  # the data path does not make a view the method does not use
    method.step(b, student, teacher, LATE).loss.backward()
    assert (student.rows, teacher.rows) == FORWARD_ROWS[name]


class ConstantTeacher(nn.Module):
    """A teacher whose probabilities are the same for every image: (0.55, 0.45, 0, 0) after softmax."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.tensor([0.55, 0.45, 1e-9, 1e-9]).log().expand(len(x), C)
        return logits, torch.zeros(len(x), 4)


def test_debias_lets_an_under_predicted_class_pass_a_threshold_its_raw_probability_never_reaches():
    """Raw: max p 0.55 < T = 0.6 everywhere, nothing kept. After one step p_bar is the teacher's mean (0.55, 0.45, ~0,
    ~0) (bias-corrected). With p_bar = (0.9, 0.1, 0.5, 0.5), as after a run where class 0 dominated, strength 1:
    p~ ∝ (0.55 / 0.9, 0.45 / 0.1) -> class 1 at 0.88 >= 0.6, every image kept."""
    student, _ = make_models()
    hp = dict(tau=0.6, tau_min=0.6, warmup_epochs=100.0, rampup_epochs=0.0)  # a fixed threshold of 0.6
    plain = build_method("mt_capr", C, num_unlabeled=10, **hp)
    out = plain.step(make_batch(), student, ConstantTeacher(), LATE)
    assert not out.mask.any() and "debias.running" not in plain.state_dict()  # off: no state, old checkpoints load
    method = build_method("mt_capr", C, num_unlabeled=10, debias=1.0, debias_momentum=0.5, **hp)
    method.step(make_batch(), student, ConstantTeacher(), LATE)  # the step updates p_bar from the teacher
    assert torch.allclose(method.debias.class_probs[:2], torch.tensor([0.55, 0.45]), atol=1e-4)
    method.debias.running.copy_(torch.tensor([0.9, 0.1, 0.5, 0.5]))  # p_bar = this (steps -> inf: no correction) ...
    method.debias.momentum = 1.0 - 1e-9  # ... held there by this step's update (weight 1e-9 on the batch)
    method.debias.steps.fill_(10**12)
    out = method.step(make_batch(), student, ConstantTeacher(), LATE)
    assert out.mask.all() and (out.pseudo == 1).all() and out.logs["loss/pl"] > 0
    fresh = build_method("mt_capr", C, num_unlabeled=10, debias=1.0, **hp)
    fresh.load_state_dict(method.state_dict())  # p_bar travels with the method's state (checkpoints)
    assert torch.equal(fresh.debias.running, method.debias.running)
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1])  # the labeled prior reaches the debiasing only with target labeled
    aligned = build_method("clcp_mt", C, num_unlabeled=10, debias=1.0, debias_target="labeled", prior=prior)
    assert torch.equal(aligned.debias.target, prior) and aligned.prior is None  # L_sup stays unbalanced
    assert build_method("clcp_mt", C, num_unlabeled=10, debias=1.0, prior=prior).debias.target is None
    with pytest.raises(ValueError, match="method.debias needs single-label data"):
        build_method("fixmatch", C, num_unlabeled=10, debias=1.0)
    with pytest.raises(ValueError, match="method.debias needs single-label data"):
        build_method("clcp_mt", C, num_unlabeled=10, task="multi", debias=1.0)


def test_method_from_config_passes_every_key_under_its_own_name():
    import dataclasses

    from clcpmt.config import MethodConfig
    from clcpmt.methods import NOT_LOSS_KEYS, method_from_config

    cfg = dataclasses.replace(MethodConfig(), lambda_mt=2.0, lambda_sde=0.3, lambda_pl=0.7, sde_temperature=0.2,
                              tau=0.9,
                  tau_min=0.4, warmup_epochs=2.0, mt_on_labeled=False, class_balance="weights")  # fmt: skip
    method = method_from_config(cfg, C, 10, "single", rampup_epochs=3.0, prior=torch.full((C,), 1 / C), proj_dim=4)
    assert (method.lambda_mt, method.lambda_sde, method.lambda_pl) == (2.0, 0.3, 0.7)
    assert method.sde_temperature == 0.2 and method.mt_on_labeled is False and method.rampup_epochs == 3.0
    assert method.class_balance == "weights" and method.prior is not None
    assert method.rule.tau == 0.9 and method.rule.tau_min == 0.4 and method.rule.warmup_epochs == 2.0
    assert set(NOT_LOSS_KEYS) < {f.name for f in dataclasses.fields(MethodConfig)}
