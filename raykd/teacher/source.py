"""The one place that reads ``teacher.mode``: which source gives a transfer run its frozen logits.

``inline`` and ``cache`` are plain PyTorch; ``server`` is imported only when asked for, so the core never loads Ray.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raykd.config import ExperimentConfig
from raykd.engine import CPU
from raykd.nodes import Setup
from raykd.teacher.cache import CachedTeacher, node_logits
from raykd.teacher.inline import InlineTeacher
from raykd.teacher.protocol import TeacherLogits

#: A node's model by id, loaded (and cached) only when a source asks for it.
LoadNode = Callable[[int], nn.Module]


def teacher_logits(
    cfg: ExperimentConfig,
    setup: Setup,
    seed: int,
    frozen: list[int],
    initial: int | None,
    load: LoadNode,
    server: Any = None,
    device: torch.device = CPU,
) -> TeacherLogits:
    """The per-batch logits of the ``frozen`` teacher nodes and of the ``initial`` student (DP-KD), where
    ``teacher.mode`` says: models in this process, the offline cache, or ``server`` (the TeacherServer actor, or
    the name it was started under). A logit cache's missing entry is computed on ``device``."""
    mode = cfg.teacher.mode
    if mode == "cache":
        array = lambda node: node_logits(cfg, setup, node, seed, device)[0]  # noqa: E731
        start = array(initial) if initial is not None else None
        return CachedTeacher([array(n) for n in frozen], start, classes=setup.dataset.num_classes)
    if mode == "server":
        if server is None:
            raise ValueError("teacher.mode=server: the run was given no TeacherServer (start one with start_server)")
        from raykd.teacher.server import served_teacher

        return served_teacher(cfg, setup, seed, frozen, initial, load, server)
    start = copy.deepcopy(load(initial)) if initial is not None else None
    return InlineTeacher([load(n) for n in frozen], start, setup.dataset.train_x)
