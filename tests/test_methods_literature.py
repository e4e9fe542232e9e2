"""The literature's methods against their formulas and limiting cases (plain PyTorch, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raykd.engine import TransferBatches, method_context
from raykd.methods import METHODS
from raykd.methods.base import UNLABELLED, Context, StepLogits, top_fraction
from raykd.methods.continuation import ContinuationKD, annealing_temperature, phi, psi
from raykd.methods.label_revision import LabelRevisionKD, revise
from raykd.methods.miniplm import DifferenceSamplingKD, difference_scores
from raykd.methods.probe import ClassSimilarityProbe, LabelSmoothingProbe, PartialTeacherProbe
from raykd.methods.reffakd import ReffAKD, autoencoder, class_centroids, latent_soft_labels
from raykd.methods.skew import SkewKL, SkewReverseKL

torch.manual_seed(0)
N, C = 16, 5
STUDENT, TEACHER = torch.randn(N, C), torch.randn(N, C) * 3
TARGETS = torch.randint(0, C, (N,))
ALL = torch.ones(N, dtype=torch.bool)
INDEX = torch.arange(N)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from probabilities, written out."""
    return (p * (p.log() - q.log())).sum(1)


def context(x: torch.Tensor, y: torch.Tensor, pool: int, teachers: list[nn.Module], **kw: object) -> Context:
    """A Context from the real engine: the first ``len(y) - pool`` rows labelled, the rest an unlabelled pool."""
    labelled, unlabelled = torch.arange(len(y) - pool).numpy(), torch.arange(len(y) - pool, len(y)).numpy()
    batches = TransferBatches(x, y, labelled, unlabelled, 8, distill_labelled=True, seed=0)
    return method_context(batches, lambda: teachers, int(y.max()) + 1, 0, **kw)


# ---------------------------------------------------------------- Continuation-KD / Annealing-KD


def test_annealing_schedule_steps_from_t_max_to_one() -> None:
    assert [annealing_temperature(e, 8, 4) for e in range(10)] == [4, 4, 3, 3, 2, 2, 1, 1, 1, 1]
    assert [annealing_temperature(e, 3, 4) for e in range(5)] == [4, 3, 2, 1, 1]  # floor(3/4) = 0 -> every epoch
    assert phi(4, 4) == 0.25 and phi(1, 4) == 1.0


def test_psi_rises_linearly_after_warmup_and_is_a_step_at_warmup_one() -> None:
    assert [psi(e, 10, 0.5) for e in (0, 5, 6, 9, 10, 12)] == pytest.approx([0, 0, 0.2, 0.8, 1, 1])
    assert [psi(e, 4, 1.0) for e in range(6)] == [0, 0, 0, 0, 1, 1]


def test_continuation_with_zero_margin_and_step_psi_is_annealing_kd() -> None:
    epochs, t_max = 8, 4
    method = ContinuationKD(t_max=t_max, margin=0.0, anneal_fraction=0.5, psi_warmup=1.0)
    for epoch in range(epochs):
        method.start_epoch(epoch, epochs)
        loss = method.losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)["loss"]
        if epoch < 4:  # Annealing-KD phase 1: MSE to the teacher scaled by 1 - (T - 1) / T_max, T = 4, 3, 2, 1
            scale = 1 - (t_max - epoch - 1) / t_max
            expected = (STUDENT - scale * TEACHER).pow(2).sum(1).mean()
        else:  # phase 2: cross-entropy only
            expected = F.cross_entropy(STUDENT, TARGETS)
        assert torch.allclose(loss, expected, atol=1e-5), epoch


def test_continuation_margin_hinges_the_matching_term_and_psi_mixes_in_ce() -> None:
    method = ContinuationKD(t_max=2, margin=3.0, anneal_fraction=1.0, psi_warmup=0.0)
    method.start_epoch(1, 4)  # n = 4, T = 2 - 1 // 2 = 2, psi = 1/4
    scale = phi(2, 2)
    hinge = ((STUDENT - scale * TEACHER).pow(2).sum(1) - 3.0 * scale).clamp_min(0).mean()
    out = method.losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    assert torch.allclose(out["loss"], 0.25 * F.cross_entropy(STUDENT, TARGETS) + 0.75 * hinge, atol=1e-5)
    huge = ContinuationKD(margin=1e9)
    huge.start_epoch(0, 10)
    assert huge.losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)["matching"] == 0


def test_continuation_before_start_epoch_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="start_epoch"):
        ContinuationKD().losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)


# ---------------------------------------------------------------- probe teachers (Tang et al. 2020)


def test_label_smoothing_probe_target_and_zero_eps_is_cross_entropy() -> None:
    probe = LabelSmoothingProbe(alpha=1.0, epsilon=0.2)
    target = probe.target(F.softmax(TEACHER, 1), TARGETS)
    assert torch.allclose(target, 0.8 * F.one_hot(TARGETS, C) + 0.2 / C)
    plain = LabelSmoothingProbe(alpha=1.0, epsilon=0.0).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    assert torch.allclose(plain["loss"], F.cross_entropy(STUDENT, TARGETS), atol=1e-5)  # KL(onehot || p) = CE


def test_partial_teacher_keeps_true_class_probability_and_spreads_the_rest() -> None:
    t = 2.0
    p_t = F.softmax(TEACHER / t, 1)
    target = PartialTeacherProbe(temperature=t).target(p_t, TARGETS)
    on_true = p_t[INDEX, TARGETS]
    assert torch.allclose(target[INDEX, TARGETS], on_true)
    others = target.masked_fill(F.one_hot(TARGETS, C).bool(), float("nan"))
    assert torch.allclose(others.nanmean(1), (1 - on_true) / (C - 1)) and torch.allclose(target.sum(1), torch.ones(N))
    out = PartialTeacherProbe(temperature=t, alpha=1.0).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    assert torch.allclose(out["loss"], kl(target, F.softmax(STUDENT / t, 1)).mean() * t * t, atol=1e-5)


def test_probes_use_the_teachers_top_class_on_unlabelled_rows() -> None:
    unlabelled = torch.full((N,), UNLABELLED)
    p_t = F.softmax(TEACHER, 1)
    target = PartialTeacherProbe(temperature=1.0).target(p_t, p_t.argmax(1))
    out = PartialTeacherProbe(temperature=1.0, alpha=0.5).losses(StepLogits([STUDENT], [TEACHER]), unlabelled, ALL)
    assert out["ce"] == 0 and torch.allclose(out["kd"], kl(target, F.softmax(STUDENT, 1)).mean(), atol=1e-5)


def test_class_similarity_probe_reads_the_teachers_final_layer() -> None:
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        teacher[2].weight.copy_(torch.tensor([[1.0] + [0.0] * 7, [0.9, 0.1] + [0.0] * 6, [0.0, 0.0, 1.0] + [0] * 5]))
    y = torch.tensor([0, 1, 2, 0])
    probe = ClassSimilarityProbe(temperature=0.5, alpha=1.0)
    probe.prepare(context(torch.randn(4, 4), y, 0, [teacher]))
    similarity = probe.kept("similarity")
    cos01 = 0.9 / math.hypot(0.9, 0.1)
    expected_row0 = F.softmax(torch.tensor([1.0, cos01, 0.0]) / 0.5, 0)
    assert torch.allclose(similarity[0], expected_row0, atol=1e-6)
    assert similarity[0, 1] > similarity[0, 2]  # classes 0 and 1 have similar weight vectors
    out = probe.losses(StepLogits([torch.randn(4, 3)], [torch.randn(4, 3)]), y, torch.ones(4, dtype=torch.bool))
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="final nn.Linear"):
        ClassSimilarityProbe().prepare(context(torch.randn(4, 4), y, 0, [nn.Sequential(nn.Linear(4, 7))]))


# ---------------------------------------------------------------- label revision and data selection (Lan et al.)


def test_revised_label_argmax_is_always_the_true_class() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        k = int(torch.randint(2, 12, (1,), generator=generator))
        logits = torch.randn(64, k, generator=generator) * float(torch.rand(1, generator=generator) * 20)
        targets = torch.randint(0, k, (64,), generator=generator)
        eta = float(torch.rand(1, generator=generator)) * 0.999 + 1e-4
        revised = revise(F.softmax(logits, 1), targets, eta)
        assert (revised.argmax(1) == targets).all()
        assert torch.allclose(revised.sum(1), torch.ones(64), atol=1e-5)


def test_revision_formula_and_unlabelled_rows_keep_the_teacher() -> None:
    p_t = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    targets = torch.tensor([1, UNLABELLED])
    b = 0.6 / (0.7 - 0.2 + 1)
    revised = revise(p_t, targets, 0.6)
    assert torch.allclose(revised[0], b * p_t[0] + (1 - b) * torch.tensor([0.0, 1.0, 0.0]))
    assert torch.equal(revised[1], p_t[1])


def test_data_selection_distils_the_teachers_surest_rows_and_keeps_ce_on_all() -> None:
    x, y = torch.randn(N, 3), TARGETS
    teacher_logits = F.one_hot(y, C).float() * torch.linspace(0, 8, N).unsqueeze(1)  # confidence grows with row
    method = LabelRevisionKD(eta=0.5, fraction=0.25, temperature=2.0, alpha=0.4)
    method.prepare(context(x, y, 0, [], teacher_logits=lambda: [teacher_logits]))
    selected = method.kept("selected")
    assert selected.tolist() == [False] * 12 + [True] * 4
    out = method.losses(StepLogits([STUDENT], [teacher_logits], index=INDEX), y, ALL)
    target = revise(F.softmax(teacher_logits / 2, 1), y, 0.5)
    kd = kl(target[12:], F.softmax(STUDENT[12:] / 2, 1)).mean() * 4
    assert torch.allclose(out["loss"], 0.6 * F.cross_entropy(STUDENT, y) + 0.4 * kd, atol=1e-5)
    assert out["selected"] == 0.25


# ---------------------------------------------------------------- skew KL (DistiLLM)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_skew_zero_is_plain_forward_and_reverse_kl(t: float) -> None:
    p, q = F.softmax(TEACHER / t, 1), F.softmax(STUDENT / t, 1)
    forward = SkewKL(skew=0.0, temperature=t, alpha=1.0).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    reverse = SkewReverseKL(skew=0.0, temperature=t, alpha=1.0).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    assert torch.allclose(forward["loss"], kl(p, q).mean() * t * t, atol=1e-5)
    assert torch.allclose(reverse["loss"], kl(q, p).mean() * t * t, atol=1e-5)


def test_skew_divergences_match_the_mixture_formula_and_stay_bounded() -> None:
    a, alpha = 0.1, 0.3
    p, q = F.softmax(TEACHER, 1), F.softmax(STUDENT, 1)
    forward = SkewKL(skew=a, alpha=alpha).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    reverse = SkewReverseKL(skew=a, alpha=alpha).losses(StepLogits([STUDENT], [TEACHER]), TARGETS, ALL)
    ce = F.cross_entropy(STUDENT, TARGETS)
    assert torch.allclose(forward["loss"], (1 - alpha) * ce + alpha * kl(p, a * p + (1 - a) * q).mean(), atol=1e-5)
    assert torch.allclose(reverse["loss"], (1 - alpha) * ce + alpha * kl(q, (1 - a) * p + a * q).mean(), atol=1e-5)
    far = torch.full((N, C), -50.0).scatter(1, (TEACHER.argmax(1, keepdim=True) + 1) % C, 50.0).requires_grad_()
    out = SkewKL(skew=a, alpha=1.0).losses(StepLogits([far], [TEACHER * 10]), TARGETS, ALL)
    assert out["loss"] <= -math.log(a) + 1e-5  # KL(p || a p + ...) <= -log a, however wrong the student
    out["loss"].backward()
    assert torch.isfinite(far.grad).all()


# ---------------------------------------------------------------- ReffAKD


def test_latent_soft_labels_follow_centroid_similarity_and_skip_absent_classes() -> None:
    codes = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, 2, 0])
    soft = latent_soft_labels(*class_centroids(codes, labels, 4), 0.5)
    assert torch.allclose(soft.sum(1), torch.ones(4)) and (soft[:3, 3] == 0).all()  # absent class 3: no mass
    assert soft[0, 0] > soft[0, 1] > soft[0, 2]
    c0, c1 = F.normalize(torch.tensor([1.0, 0.05]), dim=0), F.normalize(torch.tensor([1.0, 0.2]), dim=0)
    cos = torch.stack([c0 @ c0, c0 @ c1, c0 @ torch.tensor([0.0, 1.0])])
    assert torch.allclose(soft[0, :3], F.softmax(cos / 0.5, 0), atol=1e-6)


def test_reffakd_learns_soft_labels_without_a_teacher_and_reports_its_cost() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 1, 12, generator=generator) * 4
    y = torch.arange(3).repeat(20)
    x = centres[y] + 0.1 * torch.randn(60, 1, 12, generator=generator)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 100), nn.ReLU(), nn.Linear(100, 3))
    method = ReffAKD(latent=4, ae_epochs=30, alpha=1.0, temperature=1.0)
    costs = method.prepare(context(x, y, 30, [teacher]))
    assert method.teachers == "unused"
    assert costs["ae_params"] == sum(p.numel() for p in autoencoder(12, 4).parameters()) and costs["ae_seconds"] > 0
    assert costs["teacher_params"] == 12 * 100 + 100 + 100 * 3 + 3
    assert torch.equal(method.kept("class_of")[30:], y[30:])  # pool rows land on their own class's centroid
    soft = method.kept("soft")
    assert (soft.argmax(1) == torch.arange(3)).all()
    student = torch.randn(60, 3)
    out = method.losses(StepLogits([student], [], index=torch.arange(60)), y, torch.ones(60, dtype=torch.bool))
    assert torch.allclose(out["loss"], kl(soft[y], F.softmax(student, 1)).mean(), atol=1e-5)


# ---------------------------------------------------------------- MiniPLM difference sampling


def test_difference_scores_and_top_fraction() -> None:
    p_t = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    reference = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 0.0]])
    classes = torch.tensor([0, 0, 1])
    expected = torch.tensor(
        [
            math.log(2) + math.log(0.9),
            F.cross_entropy(reference[1:2], classes[1:2]) + math.log(0.5),
            math.log(2) + math.log(0.8),
        ]
    )
    scores = difference_scores(p_t, reference, classes)
    assert torch.allclose(scores, expected, atol=1e-6)
    table = top_fraction(scores, torch.tensor([10, 11, 12]), 2 / 3, 14)
    assert table.nonzero().flatten().tolist() == [10, 12]


def test_difference_sampling_reads_teacher_logits_once_and_selects_a_fraction() -> None:
    x, y = torch.randn(40, 1, 6), torch.randint(0, 3, (40,))
    calls: list[int] = []
    teacher_logits = F.one_hot(y, 3).float() * 5

    def logits() -> list[torch.Tensor]:
        calls.append(1)
        return [teacher_logits]

    method = DifferenceSamplingKD(fraction=0.25, reference_epochs=5, temperature=2.0, alpha=1.0)
    costs = method.prepare(context(x, y, 10, [], teacher_logits=logits))
    selected = method.kept("selected")
    assert calls == [1] and int(selected.sum()) == 10 and costs["reference_params"] == 6 * 32 + 32 + 32 * 3 + 3
    student = torch.randn(40, 3)
    out = method.losses(
        StepLogits([student], [teacher_logits], index=torch.arange(40)), y, torch.ones(40, dtype=torch.bool)
    )
    expected = kl(F.softmax(teacher_logits[selected] / 2, 1), F.softmax(student[selected] / 2, 1)).mean() * 4
    assert torch.allclose(out["loss"], expected, atol=1e-5) and out["selected"] == 0.25
    full = DifferenceSamplingKD(fraction=1.0, reference_epochs=1, alpha=1.0)
    full.prepare(context(x, y, 10, [], teacher_logits=logits))
    assert full.kept("selected").all()


def test_registry_holds_every_literature_method() -> None:
    names = {"continuation", "label-smoothing", "class-similarity", "kd-pt", "label-revision"}
    assert names | {"skew-kl", "skew-rkl", "reffakd", "miniplm"} <= set(METHODS)
