"""Registry of distillation methods: one file per method, one line here."""

from __future__ import annotations

from raykd.methods.base import Method, StepLogits
from raykd.methods.ce import CrossEntropy
from raykd.methods.continuation import ContinuationKD
from raykd.methods.dml import DeepMutualLearning
from raykd.methods.dpkd import DataPartitioningKD
from raykd.methods.kd import KnowledgeDistillation
from raykd.methods.label_revision import LabelRevisionKD
from raykd.methods.miniplm import DifferenceSamplingKD
from raykd.methods.probe import ClassSimilarityProbe, LabelSmoothingProbe, PartialTeacherProbe
from raykd.methods.reffakd import ReffAKD
from raykd.methods.skew import SkewKL, SkewReverseKL

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        CrossEntropy,
        KnowledgeDistillation,
        DeepMutualLearning,
        DataPartitioningKD,
        ContinuationKD,
        LabelSmoothingProbe,
        ClassSimilarityProbe,
        PartialTeacherProbe,
        LabelRevisionKD,
        SkewKL,
        SkewReverseKL,
        ReffAKD,
        DifferenceSamplingKD,
    )
}

__all__ = ["METHODS", "Method", "StepLogits"]
