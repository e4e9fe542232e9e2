"""Registry of distillation methods: one file per method, one line here."""

from __future__ import annotations

from raykd.methods.base import Method, StepLogits
from raykd.methods.ce import CrossEntropy
from raykd.methods.dml import DeepMutualLearning
from raykd.methods.dpkd import DataPartitioningKD
from raykd.methods.kd import KnowledgeDistillation

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (CrossEntropy, KnowledgeDistillation, DeepMutualLearning, DataPartitioningKD)
}

__all__ = ["METHODS", "Method", "StepLogits"]
