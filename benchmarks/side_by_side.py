"""Side-by-side speed of raykd's training engine against a bare PyTorch loop and against torchdistill.

    python benchmarks/side_by_side.py [bare|cached|torchdistill|all|cifar]

Every contender runs in this one process, on one torch thread, on the same MNIST-1D rows (the training
split minus validation, cut to whole batches), the same models and seeds, batch size, epochs and Adam
learning rate. The contenders of a comparison train in lockstep: each in its own thread, one epoch at a
time in turn (only one thread ever runs), the turn order rotating with the seed. So neighbouring epochs of
different contenders are a fraction of a second apart, load from other processes hits them alike, and the
per-epoch ratios against the baseline stay meaningful; each run's first epoch is warm-up and not counted.
Wall and CPU (this thread's) time are both reported, with the machine's load average.
1. bare: raykd's ``fit`` with ``CrossEntropy`` over ``TransferBatches`` vs a hand-written loop (shuffled
   index batches, ``model(x)``, ``F.cross_entropy``, Adam step). Student samples/s, raykd / bare.
2. cached: raykd KD with cached teacher logits (``CachedTeacher`` over the memory-mapped ``LogitCache``,
   what ``teacher.mode: cache`` uses) vs a hand-written loop indexing a precomputed logit tensor with a
   hand-written KD loss. Student samples/s, raykd / bare; and the CPU cost of the KD loss alone, forward and
   backward, raykd's method vs the hand-written expression.
3. torchdistill: raykd KD (teacher inline, and cached) vs torchdistill's ``DistillationBox`` with its
   ``KDLoss``, built from a YAML config the way its users write one, same teacher (a cnn1d 6x the student's
   FLOPs). Time per epoch, torchdistill / raykd, and test accuracy after the lockstep runs, one per seed.
   raykd's ``alpha`` weights the KD term and torchdistill's the CE term, so torchdistill gets
   ``alpha = 1 - alpha`` (its ``beta`` defaults to ``1 - alpha``, which is raykd's alpha); the script
   checks that the two losses agree on a few batches before timing anything.
4. cifar (not part of ``all``): the same comparisons at CIFAR's shape, ResNet-20 -> ResNet-8 on synthetic
   32x32x3 images, batch 128, with random crop + flip (``benchmarks/cifar_shape.py``).

The harness and the contenders live in ``benchmarks/lockstep.py``; this file holds the MNIST-1D cases.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from lockstep import (
    CACHE,
    KD,
    THREADS,
    Case,
    Data,
    bare_contender,
    cached_logits,
    check_losses_agree,
    load_average,
    print_accuracy,
    raykd_contender,
    student,
    teacher,
    timed,
    torchdistill_contender,
    versus_bare,
    versus_torchdistill,
)
from torch import Tensor

from raykd.config import ModelSpec, validate_config
from raykd.methods.base import StepLogits
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.nodes import prepare
from raykd.teacher.cache import CachedTeacher
from raykd.teacher.inline import InlineTeacher

MNIST1D = Case(
    dataset="mnist1d",
    student=ModelSpec(name="cnn1d"),  # the MNIST-1D reference CNN, about 5k weights
    teacher=ModelSpec(name="cnn1d", width=64),  # about 6x the student's FLOPs
    teacher_epochs=30,
    batch=64,  # raykd's default transfer batch: small steps are where per-step overhead shows
    seeds=(0, 1, 2, 3),
    epochs=21,  # per run: one warm-up epoch, then 20 timed ones; 3.'s accuracy is read after these
)


def load() -> Data:
    """MNIST-1D through raykd's loader; no pool and no nodes, so the rows are the training split minus validation."""
    cfg = validate_config(
        {
            "name": "side-by-side",
            "seeds": [0],
            "data": {"dataset": "mnist1d", "pool_fraction": 0.0},
            "nodes": {"cache_dir": str(CACHE)},
            "transfer": {"set": "local"},
            "methods": [{"name": "kd", **KD}],
        }
    )
    setup = prepare(cfg, 0)
    data = setup.dataset
    rows = np.sort(setup.splits.partitioned)
    rows = rows[: len(rows) - len(rows) % MNIST1D.batch]  # whole batches only: every contender does the same steps
    return Data(data.train_x, data.train_y, rows, data.test_x, data.test_y, data.input_shape, data.num_classes, MNIST1D)


def bare(data: Data) -> None:
    started = load_average()
    contenders = {"raykd": raykd_contender(data, CrossEntropy()), "bare": bare_contender(data)}
    versus_bare("1. cross-entropy", data, timed(contenders, data)[0], started)


def loss_cost(data: Data, teacher_logits: Tensor) -> tuple[float, float]:
    """CPU microseconds of one batch's KD loss, forward and backward: raykd's method vs the bare loop's expression.

    Locates the part of 2.'s gap that is the method's loss code rather than the engine.
    """
    index = torch.as_tensor(data.rows[: data.case.batch])
    logits = student(data, 0)(data.x[index]).detach().requires_grad_(True)
    target, y, mask = teacher_logits[index], data.y[index], torch.ones(len(index), dtype=torch.bool)
    method, temperature, alpha = KnowledgeDistillation(**KD), KD["temperature"], KD["alpha"]

    def ours() -> None:
        method.losses(StepLogits([logits], [target]), y, mask)["loss"].backward()

    def theirs() -> None:
        soft = F.kl_div(
            F.log_softmax(logits / temperature, dim=1), F.softmax(target / temperature, dim=1), reduction="batchmean"
        )
        ((1 - alpha) * F.cross_entropy(logits, y) + alpha * temperature**2 * soft).backward()

    costs = []
    for loss in (ours, theirs):
        runs = []
        for _ in range(5):
            started = time.thread_time()
            for _ in range(1000):
                loss()
            runs.append((time.thread_time() - started) * 1e3)  # 1000 calls: ms in total = us per call
        costs.append(min(runs))
    return costs[0], costs[1]


def cached(data: Data) -> None:
    started = load_average()
    model, path = teacher(data)
    logits = cached_logits(model, path, data)
    dense = torch.from_numpy(np.array(logits))
    contenders = {
        "raykd": raykd_contender(data, KnowledgeDistillation(**KD), CachedTeacher([logits], classes=data.classes)),
        "bare": bare_contender(data, dense),
    }
    versus_bare("2. KD with cached teacher logits", data, timed(contenders, data)[0], started)
    ours, theirs = loss_cost(data, dense)
    print(f"   KD loss forward+backward, CPU per batch: raykd's method {ours:.0f} us, bare {theirs:.0f} us", flush=True)


def torchdistill(data: Data) -> None:
    started = load_average()
    model, path = teacher(data)
    gap = check_losses_agree(data, model)
    method = KnowledgeDistillation(**KD)
    contenders = {
        "torchdistill": torchdistill_contender(data, model),
        "raykd-inline": raykd_contender(data, method, InlineTeacher([model])),
        "raykd-cache": raykd_contender(
            data, method, CachedTeacher([cached_logits(model, path, data)], classes=data.classes)
        ),
    }
    timings, accs = timed(contenders, data)
    versus_torchdistill("3. KD vs torchdistill", data, model, gap, timings)
    print_accuracy(accs, data)
    print(f"   {started} at start, {load_average()} at end", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    benches = {"bare": bare, "cached": cached, "torchdistill": torchdistill}
    if which not in (*benches, "all", "cifar"):
        sys.exit(f"usage: python benchmarks/side_by_side.py [{'|'.join(benches)}|all|cifar]")
    torch.set_num_threads(THREADS)
    if which == "cifar":
        from cifar_shape import cifar

        cifar()
        sys.exit()
    data = load()
    for name, bench in benches.items():
        if which in (name, "all"):
            bench(data)
