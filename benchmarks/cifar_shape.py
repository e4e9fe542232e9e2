"""Case 4 of ``side_by_side.py``: raykd, a bare loop and torchdistill at CIFAR's shape.

    python benchmarks/side_by_side.py cifar        # from the repository root

Synthetic 32x32x3 images (``benchmarks/cifar_data.py``, loaded through raykd's own dataset path as a
``package.module:function`` dataset), ResNet-20 teacher -> ResNet-8 student from raykd's model registry
(``resnet`` depth 20 and 8: 6n+2 layers, n = 3 and 1 BasicBlocks per stage, 16/32/64 channels, 272k and 78k
weights), batch 128, Adam 3e-3, KD T = 4 / alpha 0.5, one torch thread, the lockstep harness of
``lockstep.py``. Two lockstep groups, because raykd refuses cache mode with augmentation (``data.augment``
with ``teacher.mode: cache`` is a config error: cached logits are of un-augmented rows):
a. cache mode, no augmentation: raykd from its memory-mapped logit cache, the bare loop indexing the same
   logits in memory, torchdistill running its teacher on every batch (it has no cache). raykd / bare and
   torchdistill / raykd.
b. teacher inline, random crop (padding 4) + horizontal flip: raykd's ``data.augment`` transform inside
   ``TransferBatches``; torchdistill gets the very same transform, drawn from the same seed, applied to each
   batch its loader yields, so both frameworks train on identical views. torchdistill / raykd.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from lockstep import (
    CACHE,
    KD,
    Case,
    Data,
    bare_contender,
    cached_logits,
    check_losses_agree,
    load_average,
    print_accuracy,
    raykd_contender,
    teacher,
    timed,
    torchdistill_contender,
    versus_bare,
    versus_torchdistill,
)

from raykd.config import ModelSpec, validate_config
from raykd.methods.kd import KnowledgeDistillation
from raykd.nodes import prepare
from raykd.teacher.cache import CachedTeacher
from raykd.teacher.inline import InlineTeacher

DATASET = "benchmarks.cifar_data:synthetic"
AUGMENT = ["random_crop", "horizontal_flip"]
ROWS = 1024  # 8 steps of 128 per epoch: a ResNet-8 epoch takes seconds on one core
CASE = Case(
    dataset="cifar-shape",
    student=ModelSpec(name="resnet", depth=8),
    teacher=ModelSpec(name="resnet", depth=20),  # about 3.3x the student's FLOPs
    teacher_epochs=8,
    batch=128,
    seeds=(0, 1),
    epochs=3,  # one warm-up epoch and two timed ones per run: each epoch is seconds, not a fraction of one
)


def load() -> Data:
    """The synthetic images through raykd's loader (no pool, no nodes), cut to ``ROWS`` training rows."""
    cfg = validate_config(
        {
            "name": "side-by-side-cifar",
            "seeds": [0],
            "data": {"dataset": DATASET, "pool_fraction": 0.0, "augment": AUGMENT},
            "nodes": {"cache_dir": str(CACHE), "model": CASE.student.model_dump(exclude_none=True)},
            "transfer": {"set": "local"},
            "methods": [{"name": "kd", **KD}],
        }
    )
    setup = prepare(cfg, 0)
    data, rows = setup.dataset, np.sort(setup.splits.partitioned)[:ROWS]
    case = replace(CASE, augment=tuple(cfg.data.augment))
    return Data(data.train_x, data.train_y, rows, data.test_x, data.test_y, data.input_shape, data.num_classes, case)


def cifar() -> None:
    """Both lockstep groups, each with its load average at start and end and the students' test accuracy."""
    started = load_average()
    data = load()
    model, path = teacher(data)
    gap = check_losses_agree(data, model)
    method, logits = KnowledgeDistillation(**KD), cached_logits(model, path, data)
    cache = {
        "raykd": raykd_contender(data, method, CachedTeacher([logits], classes=data.classes)),
        "bare": bare_contender(data, torch.from_numpy(np.array(logits))),
        "torchdistill": torchdistill_contender(data, model),
    }
    timings, accs = timed(cache, data, warm_up=False)
    versus_bare("4a. CIFAR shape, KD, raykd cache mode vs bare loop, no augmentation", data, timings, started)
    versus_torchdistill("4a. torchdistill (teacher inline) vs raykd cache mode", data, model, gap, timings)
    print_accuracy(accs, data)
    started = load_average()
    inline = {
        "raykd-inline": raykd_contender(data, method, InlineTeacher([model]), augment=True),
        "torchdistill": torchdistill_contender(data, model, augment=True),
    }
    timings, accs = timed(inline, data, warm_up=False)
    versus_torchdistill("4b. CIFAR shape, KD, teacher inline, crop + flip", data, model, gap, timings)
    print_accuracy(accs, data)
    print(f"   {started} at start, {load_average()} at end", flush=True)
