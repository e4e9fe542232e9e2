"""Registry of distillation methods: one file per method, one line here.

Entries are ``"module:Class"`` strings so that reading the registry (config validation, ``--help``)
imports no torch; ``method_class`` imports a method when a run needs it. The interface (``Method``,
``StepLogits``) lives in ``raykd.methods.base``.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

from raykd.errors import ConfigError
from raykd.references import resolve

if TYPE_CHECKING:
    from raykd.methods.base import Method

METHODS: dict[str, str] = {
    "ce": "raykd.methods.ce:CrossEntropy",
    "kd": "raykd.methods.kd:KnowledgeDistillation",
    "dml": "raykd.methods.dml:DeepMutualLearning",
    "dpkd": "raykd.methods.dpkd:DataPartitioningKD",
    "continuation": "raykd.methods.continuation:ContinuationKD",
    "label-smoothing": "raykd.methods.probe:LabelSmoothingProbe",
    "class-similarity": "raykd.methods.probe:ClassSimilarityProbe",
    "kd-pt": "raykd.methods.probe:PartialTeacherProbe",
    "label-revision": "raykd.methods.label_revision:LabelRevisionKD",
    "skew-kl": "raykd.methods.skew:SkewKL",
    "skew-rkl": "raykd.methods.skew:SkewReverseKL",
    "reffakd": "raykd.methods.reffakd:ReffAKD",
    "miniplm": "raykd.methods.miniplm:DifferenceSamplingKD",
    "dkd": "raykd.methods.dkd:DecoupledKD",
    "dist": "raykd.methods.dist:DIST",
    "gkd": "raykd.methods.gkd:GeneralisedKD",
}

#: Methods whose ``prepare`` learns per-sample or per-class tables from whole samples (labels, one input per
#: row): they distil classifiers only. Every other method is a function of logit rows and distils a language
#: model per token unchanged.
SAMPLE_LEVEL = ("label-revision", "miniplm", "class-similarity", "reffakd")


def method_class(name_or_reference: str, field: str = "methods[i].name") -> type[Method]:
    """The class of a registered method name or of a user's ``"package.module:Class"``, imported now.

    ``field`` names the config key in the one-line error when the reference is not a Method dataclass.
    """
    reference = METHODS.get(name_or_reference, name_or_reference)
    cls = resolve(reference, field)
    # A Method subclass has imported raykd.methods.base (and torch) already; anything else has not needed to.
    base = sys.modules.get("raykd.methods.base")
    if base is None or not (isinstance(cls, type) and issubclass(cls, base.Method) and dataclasses.is_dataclass(cls)):
        raise ConfigError(
            f"{field}: {name_or_reference!r} is not a method; expected a frozen dataclass subclass of "
            "raykd.methods.base.Method"
        )
    return cls
