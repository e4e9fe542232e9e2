"""DKD and DIST against their papers' formulas and limiting cases (plain PyTorch, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr

from raykd.methods import METHODS, method_class
from raykd.methods.base import UNLABELLED, StepLogits, distillation_kl, labelled_cross_entropy
from raykd.methods.dist import DIST, relation_terms
from raykd.methods.dkd import DecoupledKD, decoupled_terms

pytestmark = pytest.mark.filterwarnings("error")  # a warning here is a mistake in the test or the method

torch.manual_seed(0)
N, C = 12, 6
STUDENT, TEACHER = torch.randn(N, C), torch.randn(N, C) * 3
TARGETS = torch.randint(0, C, (N,))
ALL = torch.ones(N, dtype=torch.bool)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from probabilities, written out."""
    return (p * (p.log() - q.log())).sum(-1)


def started(method: DecoupledKD, epoch: int = 0, epochs: int = 10) -> DecoupledKD:
    method.start_epoch(epoch, epochs)
    return method


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_is_tckd_plus_teacher_weighted_nckd(t: float) -> None:
    """The paper's Eq. 3: KL(p || q) = TCKD + (1 - p_t) NCKD, row by row."""
    teacher = F.softmax(TEACHER / t, 1)
    tckd, nckd = decoupled_terms(teacher, STUDENT, TARGETS, t)
    p_t = teacher.gather(1, TARGETS.unsqueeze(1)).squeeze(1)
    kd = distillation_kl(teacher, STUDENT, t) / t**2
    assert torch.allclose(tckd + (1 - p_t) * nckd, kd, atol=1e-5)


def test_tckd_and_nckd_match_their_definitions_written_out() -> None:
    t, row = 2.0, 3
    p, q, k = F.softmax(TEACHER[row] / t, 0), F.softmax(STUDENT[row] / t, 0), int(TARGETS[row])
    rest = torch.arange(C) != k
    binary = kl(torch.stack([p[k], 1 - p[k]]), torch.stack([q[k], 1 - q[k]]))
    non_target = kl(p[rest] / p[rest].sum(), q[rest] / q[rest].sum())
    tckd, nckd = decoupled_terms(F.softmax(TEACHER / t, 1), STUDENT, TARGETS, t)
    assert torch.allclose(tckd[row], binary, atol=1e-5) and torch.allclose(nckd[row], non_target, atol=1e-5)


def test_dkd_at_alpha_beta_one_exceeds_kd_by_the_teachers_target_share_of_nckd() -> None:
    """DKD(alpha=beta=1) - KD = T^2 p_t NCKD: KD is DKD with beta = 1 - p_t, so it under-weights NCKD."""
    t = 4.0
    out = started(DecoupledKD(temperature=t, alpha=1.0, beta=1.0, warmup=0.0)).losses(
        StepLogits([STUDENT], [TEACHER]), TARGETS, ALL
    )
    teacher = F.softmax(TEACHER / t, 1)
    _, nckd = decoupled_terms(teacher, STUDENT, TARGETS, t)
    p_t = teacher.gather(1, TARGETS.unsqueeze(1)).squeeze(1)
    kd = distillation_kl(teacher, STUDENT, t).mean()
    assert torch.allclose(out["kd"] - kd, (t**2 * p_t * nckd).mean(), atol=1e-4)
    assert torch.allclose(out["loss"], labelled_cross_entropy(STUDENT, TARGETS) + out["kd"])


def test_dkd_warmup_ramps_the_kd_weight_and_identical_models_have_no_kd_term() -> None:
    method = DecoupledKD(warmup=0.5)
    logits = StepLogits([STUDENT], [TEACHER])
    ce = labelled_cross_entropy(STUDENT, TARGETS)
    first = started(method, 0, 10).losses(logits, TARGETS, ALL)
    assert torch.allclose(first["loss"], ce + 0.2 * first["kd"])
    assert torch.allclose(started(method, 4, 10).losses(logits, TARGETS, ALL)["loss"], ce + first["kd"])
    same = started(DecoupledKD()).losses(StepLogits([TEACHER], [TEACHER]), TARGETS, ALL)
    assert abs(float(same["kd"])) < 1e-5


def test_dkd_uses_the_teachers_top_class_on_unlabelled_rows() -> None:
    targets = torch.full((N,), UNLABELLED)
    out = started(DecoupledKD(alpha=1.0, beta=0.0)).losses(StepLogits([STUDENT], [TEACHER]), targets, ALL)
    tckd, _ = decoupled_terms(F.softmax(TEACHER / 4, 1), STUDENT, TEACHER.argmax(1), 4.0)
    assert torch.allclose(out["kd"], 16 * tckd.mean(), atol=1e-5) and float(out["ce"]) == 0.0


def test_dkd_before_start_epoch_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="start_epoch"):
        DecoupledKD().losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)


def test_dist_terms_are_one_minus_mean_pearson_over_rows_and_over_classes() -> None:
    s, t = F.softmax(STUDENT / 4, 1), F.softmax(TEACHER / 4, 1)
    inter, intra = relation_terms(s, t)
    rows = np.mean([pearsonr(s[i].numpy(), t[i].numpy())[0] for i in range(N)])
    columns = np.mean([pearsonr(s[:, j].numpy(), t[:, j].numpy())[0] for j in range(C)])
    assert inter.item() == pytest.approx(1 - rows, abs=1e-5) and intra.item() == pytest.approx(1 - columns, abs=1e-5)


def test_dist_loss_combines_the_terms_and_vanishes_for_a_matching_or_rescaled_teacher() -> None:
    method = DIST(temperature=2.0, beta=1.5, gamma=0.5)
    out = method.losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    inter, intra = relation_terms(F.softmax(STUDENT / 2, 1), F.softmax(TEACHER / 2, 1))
    assert torch.allclose(out["kd"], 4 * (1.5 * inter + 0.5 * intra))
    assert torch.allclose(out["loss"], labelled_cross_entropy(STUDENT, TARGETS) + out["kd"])
    assert abs(float(method.losses(StepLogits([TEACHER], [TEACHER]), TARGETS, ALL)["kd"])) < 1e-5


def test_dist_uses_only_distilled_rows_and_is_finite_with_none() -> None:
    some = torch.arange(N) < 5
    out = DIST().losses(StepLogits([STUDENT], [TEACHER]), TARGETS, some)
    inter, intra = relation_terms(F.softmax(STUDENT[:5] / 4, 1), F.softmax(TEACHER[:5] / 4, 1))
    assert torch.allclose(out["kd"], 16 * 2 * (inter + intra))
    none = DIST().losses(StepLogits([STUDENT], [TEACHER]), TARGETS, torch.zeros(N, dtype=torch.bool))
    assert float(none["kd"]) == 0.0 and torch.isfinite(none["loss"])


def test_both_are_registered_with_the_papers_defaults() -> None:
    assert method_class("dkd") is DecoupledKD and method_class("dist") is DIST and {"dkd", "dist"} <= set(METHODS)
    dkd, dist = DecoupledKD(), DIST()
    assert (dkd.alpha, dkd.beta, dkd.temperature) == (1.0, 8.0, 4.0)
    assert (dist.beta, dist.gamma, dist.temperature) == (2.0, 2.0, 4.0)


def test_dkd_stays_finite_where_the_teacher_is_certain() -> None:
    """A teacher with all its float32 mass on one class (1 - p_t rounds to 0): no NaN, and NCKD is then 0."""
    teacher = torch.full((4, C), -60.0)
    teacher[torch.arange(4), TARGETS[:4]] = 60.0
    out = started(DecoupledKD(temperature=1.0)).losses(
        StepLogits([STUDENT[:4].requires_grad_()], [teacher]), TARGETS[:4], ALL[:4]
    )
    assert all(torch.isfinite(v) for v in out.values()) and float(out["nckd"].detach()) == pytest.approx(0, abs=1e-6)
    out["loss"].backward()
    hopeless = F.softmax(teacher, 1)
    assert torch.isfinite(decoupled_terms(hopeless, STUDENT[:4], TARGETS[:4], 1.0)[0]).all()
