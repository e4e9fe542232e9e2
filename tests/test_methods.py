"""Each method against its formula and its limiting cases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from raykd.methods import METHODS, method_class
from raykd.methods.base import (
    UNLABELLED,
    StepLogits,
    distillation_kl,
    kd_terms,
    labelled_cross_entropy,
    masked_mean,
    soft_probabilities,
)
from raykd.methods.dml import DeepMutualLearning
from raykd.methods.dpkd import DataPartitioningKD, teacher_mask
from raykd.methods.kd import KnowledgeDistillation
from raykd.methods.knobs import from_class, from_source

torch.manual_seed(0)
N, C = 16, 5
STUDENT, TEACHER, INITIAL = torch.randn(N, C), torch.randn(N, C) * 3, torch.randn(N, C)
TARGETS = torch.randint(0, C, (N,))
ALL = torch.ones(N, dtype=torch.bool)


def manual_kl(p_t: torch.Tensor, z_s: torch.Tensor, t: float) -> torch.Tensor:
    """KL(p_t || softmax(z_s/T)) per row, written out."""
    log_q = torch.log_softmax(z_s / t, dim=1)
    return (p_t * (p_t.log() - log_q)).sum(1)


def test_kd_alpha_zero_is_cross_entropy() -> None:
    out = KnowledgeDistillation(temperature=3.0, alpha=0.0).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    assert torch.allclose(out["loss"], F.cross_entropy(STUDENT, TARGETS))


@pytest.mark.parametrize("t", [1.0, 2.0, 7.5])
def test_kd_matches_hinton_formula_with_t_squared(t: float) -> None:
    alpha = 0.3
    out = KnowledgeDistillation(temperature=t, alpha=alpha).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    soft = manual_kl(F.softmax(TEACHER / t, 1), STUDENT, t).mean() * t * t
    expected = (1 - alpha) * F.cross_entropy(STUDENT, TARGETS) + alpha * soft
    assert torch.allclose(out["loss"], expected, atol=1e-5)


def test_kd_with_identical_teacher_has_zero_kd_term() -> None:
    out = KnowledgeDistillation(temperature=4.0, alpha=1.0).losses(StepLogits([STUDENT], [STUDENT]), TARGETS, ALL)
    assert out["kd"].abs() < 1e-6


def test_kd_ensemble_target_is_mean_of_teacher_probabilities() -> None:
    other, t = torch.randn(N, C), 2.0
    out = KnowledgeDistillation(temperature=t, alpha=1.0).losses(StepLogits([STUDENT], [TEACHER, other]), TARGETS, ALL)
    target = (F.softmax(TEACHER / t, 1) + F.softmax(other / t, 1)) / 2
    assert torch.allclose(out["loss"], manual_kl(target, STUDENT, t).mean() * t * t, atol=1e-5)


def test_unlabelled_rows_get_only_distillation_and_never_nan() -> None:
    unlabelled = torch.full((N,), UNLABELLED)
    out = KnowledgeDistillation(alpha=0.5).losses(StepLogits([STUDENT], [TEACHER]), unlabelled, ALL)
    assert out["ce"] == 0 and torch.isfinite(out["loss"]) and out["kd"] > 0
    none = torch.zeros(N, dtype=torch.bool)
    assert masked_mean(torch.ones(N), none) == 0


def test_labelled_cross_entropy_ignores_unlabelled_rows_in_value_and_gradient() -> None:
    targets = TARGETS.clone()
    targets[::3] = UNLABELLED
    labelled = targets != UNLABELLED
    student = STUDENT.clone().requires_grad_()
    labelled_cross_entropy(student, targets).backward()
    rows = STUDENT[labelled].clone().requires_grad_()
    F.cross_entropy(rows, targets[labelled]).backward()
    assert torch.allclose(student.grad[labelled], rows.grad) and not student.grad[~labelled].any()
    none = STUDENT.clone().requires_grad_()
    ce = labelled_cross_entropy(none, torch.full((N,), UNLABELLED))
    ce.backward()
    assert ce == 0 and not none.grad.any()


def test_masked_mean_is_the_mean_of_the_selected_rows_with_its_gradient() -> None:
    values, mask = torch.randn(N, requires_grad=True), torch.arange(N) % 3 == 0
    out = masked_mean(values, mask)
    out.backward()
    assert torch.allclose(out, values[mask].mean())
    assert torch.allclose(values.grad, mask.float() / mask.sum())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("rows", ["some", "none", "weights"])
def test_kd_terms_equal_the_masked_mean_form_in_value_and_gradient(alpha: float, rows: str) -> None:
    """kd_terms folds T^2 and the row count into weights and mixes with lerp: the same terms, to float rounding."""
    targets, t = TARGETS.clone(), 2.5
    targets[::4] = UNLABELLED
    mask = {"some": torch.arange(N) % 3 != 0, "none": torch.zeros(N, dtype=torch.bool), "weights": torch.rand(N)}[rows]
    target = F.softmax(TEACHER / t, 1)
    ours, theirs = STUDENT.clone().requires_grad_(), STUDENT.clone().requires_grad_()
    out = kd_terms(ours, target, targets, mask, t, alpha)
    ce, kd = labelled_cross_entropy(theirs, targets), masked_mean(distillation_kl(target, theirs, t), mask)
    expected = {"loss": (1 - alpha) * ce + alpha * kd, "ce": ce, "kd": kd}
    out["loss"].backward()
    expected["loss"].backward()
    assert all(torch.allclose(out[k], expected[k], rtol=1e-6, atol=1e-7) for k in expected)
    assert torch.allclose(ours.grad, theirs.grad, rtol=1e-6, atol=1e-8)


def test_one_teacher_probabilities_equal_the_same_teacher_as_an_ensemble() -> None:
    one = soft_probabilities([TEACHER], 3.0)
    assert torch.equal(one, F.softmax(TEACHER / 3.0, 1))
    assert torch.equal(one, soft_probabilities([TEACHER, TEACHER], 3.0))


def test_dml_two_peers_is_symmetric() -> None:
    a, b = STUDENT.clone().requires_grad_(), TEACHER.clone().requires_grad_()
    forward = DeepMutualLearning().losses(StepLogits([a, b], []), TARGETS, ALL)
    backward = DeepMutualLearning().losses(StepLogits([b, a], []), TARGETS, ALL)
    assert torch.allclose(forward["loss"], backward["loss"])


def test_dml_formula_three_peers_and_detached_targets() -> None:
    peers = [torch.randn(N, C, requires_grad=True) for _ in range(3)]
    out = DeepMutualLearning().losses(StepLogits(peers, []), TARGETS, ALL)
    probs = [F.softmax(z.detach(), 1) for z in peers]
    expected = sum(
        F.cross_entropy(z, TARGETS) + sum(manual_kl(probs[j], z, 1.0).mean() for j in range(3) if j != k) / 2
        for k, z in enumerate(peers)
    )
    assert torch.allclose(out["loss"], expected, atol=1e-5)
    out["loss"].backward()
    # each peer's gradient comes from its own loss only: the KL targets are constants
    alone = F.cross_entropy(peers[0], TARGETS) + sum(manual_kl(probs[j], peers[0], 1.0).mean() for j in (1, 2)) / 2
    grad = torch.autograd.grad(alone, peers[0])[0]
    assert torch.allclose(peers[0].grad, grad, atol=1e-6)


def test_dpkd_mask_picks_more_confident_model_on_true_class() -> None:
    targets = torch.tensor([0, 1, UNLABELLED])
    teacher = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    initial = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.6, 0.4]])
    # row 0: teacher 0.9 > 0.6 on class 0; row 1: teacher 0.1 < 0.7 on class 1; row 2 (no label): top 0.8 > 0.6
    assert teacher_mask(teacher, initial, targets).tolist() == [True, False, True]


def test_dpkd_reduces_to_kd_when_teacher_always_wins_and_to_self_distillation_otherwise() -> None:
    t, alpha = 2.0, 0.7
    confident = F.one_hot(TARGETS, C).float() * 20
    dpkd = DataPartitioningKD(temperature=t, alpha=alpha)
    kd = KnowledgeDistillation(temperature=t, alpha=alpha)
    teacher_wins = dpkd.losses(StepLogits([STUDENT], [confident], initial=INITIAL), TARGETS, ALL)
    assert torch.allclose(teacher_wins["loss"], kd.losses(StepLogits([STUDENT], [confident]), TARGETS, ALL)["loss"])
    assert teacher_wins["teacher_fraction"] == 1
    initial_wins = dpkd.losses(StepLogits([STUDENT], [INITIAL], initial=confident), TARGETS, ALL)
    assert torch.allclose(initial_wins["loss"], kd.losses(StepLogits([STUDENT], [confident]), TARGETS, ALL)["loss"])
    assert initial_wins["teacher_fraction"] == 0


def test_registry_names_match_classes() -> None:
    assert {"ce", "kd", "dml", "dpkd"} <= set(METHODS)
    assert all(method_class(name).name == name for name in METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_knobs_read_from_source_equal_the_imported_dataclass(name: str) -> None:
    """The torch-free source reading must never drift from the class: names, types, constraints, defaults."""
    read, imported = from_source(METHODS[name]), from_class(method_class(name))
    assert (read.name, read.summary) == (imported.name, imported.summary)
    assert [(k.name, repr(k.annotation), k.default, k.description) for k in read.knobs] == [
        (k.name, repr(k.annotation), k.default, k.description) for k in imported.knobs
    ]


def test_validating_a_config_and_printing_help_import_no_torch() -> None:
    code = (
        "import sys, raykd.config as c; "
        "c.validate_config({'methods': [{'name': 'kd', 'temperature': [1, 4]}, {'name': 'dml'}]}); "
        "c.describe_schema(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
