"""The lockstep harness and the contenders of ``side_by_side.py``, shared by its MNIST-1D and CIFAR-shaped cases.

A ``Case`` names what differs between the cases (models, batch, seeds, epochs, augmentation); ``Data`` is a
case's rows. Contenders are functions ``(seed, epochs, on_epoch) -> student`` that call ``on_epoch`` at each
epoch's end, where ``lockstep`` hands the turn to the next contender.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raykd.config import AugmentSpec, ModelSpec
from raykd.data.augment import Augment, build_augment
from raykd.engine import TransferBatches, accuracy, fit, predict, seed_everything
from raykd.methods.base import Method, StepLogits
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.teacher.cache import LogitCache
from raykd.teacher.protocol import TeacherLogits

CACHE = Path(tempfile.gettempdir()) / "raykd-side-by-side"
THREADS = 1  # one core per run: the other core absorbs whatever else the machine is doing
LR = 3e-3
KD = {"temperature": 4.0, "alpha": 0.5}  # raykd's convention: alpha weights the KD term

TORCHDISTILL_YAML = """\
train:
  num_epochs: {epochs}
  train_data_loader:
    dataset_id: 'train'
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.RandomSampler'
      kwargs:
    kwargs:
      batch_size: {batch}
      num_workers: 0
    requires_supp: True
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
    requires_grad: False
  student:
    forward_proc: 'forward_batch_only'
    sequential: []
    frozen_modules: []
    requires_grad: True
  optimizer:
    key: 'Adam'
    kwargs:
      lr: {lr}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: {temperature}
              alpha: {alpha}
              reduction: 'batchmean'
          weight: 1.0
"""


@dataclass(frozen=True)
class Case:
    """What one comparison fixes for every contender: data name, models, batch, runs and augmentation."""

    dataset: str  # names the teacher file and the logit cache entry
    student: ModelSpec
    teacher: ModelSpec
    teacher_epochs: int
    batch: int
    seeds: tuple[int, ...]  # one lockstep run per seed; the first turn rotates with it
    epochs: int  # per run, the first one warm-up
    augment: tuple[AugmentSpec, ...] = ()  # what "augment=True" contenders apply to each training batch


@dataclass(frozen=True)
class Data:
    """The rows every contender trains on, the fixed test split, and the case they belong to."""

    x: Tensor
    y: Tensor
    rows: np.ndarray
    test_x: Tensor
    test_y: Tensor
    shape: tuple[int, ...]
    classes: int
    case: Case


def student(data: Data, seed: int) -> nn.Module:
    """A fresh student; the same seed gives every contender the same initial weights."""
    torch.manual_seed(seed)
    return build_model(data.case.student, data.shape, data.classes)


def augment_of(data: Data, seed: int, augment: bool) -> Augment | None:
    """The case's batch augmentation drawn from ``seed``: every contender given the same seed gets the same views."""
    return build_augment(data.case.augment, seed) if augment else None


def teacher(data: Data) -> tuple[nn.Module, Path]:
    """The case's teacher, trained once with raykd on the same rows (augmented when the case augments), kept on disk."""
    case = data.case
    spec = f"{case.teacher.name}-w{case.teacher.width}-d{case.teacher.depth}"
    path = CACHE / f"teacher-{case.dataset}-{spec}-e{case.teacher_epochs}.pt"
    seed_everything(0)
    model = build_model(case.teacher, data.shape, data.classes)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        batches = TransferBatches(data.x, data.y, data.rows, None, case.batch, False, 0, augment_of(data, 0, True))
        fit([model], CrossEntropy(), batches, case.teacher_epochs, LR)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval().requires_grad_(False), path


def cached_logits(model: nn.Module, path: Path, data: Data) -> np.ndarray:
    """The teacher's logits on the training split from raykd's logit cache (memory-mapped), as cache mode reads them."""
    cache = LogitCache(CACHE / "logits")
    key = cache.key(path, data.case.dataset, "train", "float32")
    return cache.get_or_build(key, lambda: predict(model, data.x).numpy())[0]


Timing = tuple[float, float]  # wall and CPU seconds of one epoch
OnEpoch = Callable[..., None]
Contender = Callable[[int, int, OnEpoch], nn.Module]  # (seed, epochs, on_epoch) -> the trained student


class EpochClock:
    """Wall and CPU seconds of each epoch, from ``start`` to ``tick``.

    CPU time is this thread's, which with one torch thread does all of a step's work: it is what the epoch
    costs even while other processes take turns on the cores, so it is reported beside the wall time.
    """

    def __init__(self) -> None:
        self.epochs: list[Timing] = []
        self.start()

    def start(self) -> None:
        self.last = (time.perf_counter(), time.thread_time())

    def tick(self) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        self.epochs.append((wall - self.last[0], cpu - self.last[1]))


def lockstep(contenders: dict[str, Contender], seed: int, epochs: int) -> dict[str, tuple[list[Timing], nn.Module]]:
    """Train every contender for ``epochs``, one epoch each in turn; their timings (first epoch dropped) and students.

    Each contender runs in its own thread and hands the turn on at every epoch's end, so exactly one runs at a
    time; a finished (or failed) contender drops out of the rotation. The first turn goes to contender
    ``seed mod n``, so the order rotates from run to run.
    """
    names = list(contenders)
    turns = [threading.Semaphore(0) for _ in names]
    finished = [False] * len(names)
    results: dict[str, tuple[list[Timing], nn.Module]] = {}
    errors: list[BaseException] = []

    def hand_on(i: int) -> None:
        for k in range(1, len(names) + 1):
            if not finished[(i + k) % len(names)]:
                turns[(i + k) % len(names)].release()
                return

    def work(i: int, name: str) -> None:
        torch.set_num_threads(THREADS)
        turns[i].acquire()
        clock = EpochClock()

        def on_epoch(*_: object) -> None:
            clock.tick()
            hand_on(i)
            turns[i].acquire()
            clock.start()

        try:
            model = contenders[name](seed, epochs, on_epoch)
            results[name] = clock.epochs[1:], model
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)
        finally:
            finished[i] = True
            hand_on(i)

    threads = [threading.Thread(target=work, args=(i, name)) for i, name in enumerate(names)]
    for thread in threads:
        thread.start()
    turns[seed % len(names)].release()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def raykd_contender(
    data: Data, method: Method, teacher: TeacherLogits | None = None, augment: bool = False
) -> Contender:
    """raykd's engine as a trial uses it: ``TransferBatches`` (distillation on every row, ``data.augment``'s
    transform when ``augment``) and ``fit``."""

    def run(seed: int, epochs: int, on_epoch: OnEpoch) -> nn.Module:
        model = student(data, seed)
        batches = TransferBatches(
            data.x, data.y, data.rows, None, data.case.batch, True, seed, augment_of(data, seed, augment)
        )
        fit([model], method, batches, epochs, LR, teacher=teacher, on_epoch=on_epoch)
        return model

    return run


def bare_contender(data: Data, teacher_logits: Tensor | None = None) -> Contender:
    """A hand-written loop: cross-entropy, plus raykd's KD loss written out when ``teacher_logits`` are given."""
    temperature, alpha = KD["temperature"], KD["alpha"]

    def run(seed: int, epochs: int, on_epoch: OnEpoch) -> nn.Module:
        model = student(data, seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        generator = torch.Generator().manual_seed(seed)
        rows = torch.as_tensor(data.rows)
        for _ in range(epochs):
            model.train()
            for index in rows[torch.randperm(len(rows), generator=generator)].split(data.case.batch):
                logits = model(data.x[index])
                loss = F.cross_entropy(logits, data.y[index])
                if teacher_logits is not None:
                    soft = F.kl_div(
                        F.log_softmax(logits / temperature, dim=1),
                        F.softmax(teacher_logits[index] / temperature, dim=1),
                        reduction="batchmean",
                    )
                    loss = (1 - alpha) * loss + alpha * temperature**2 * soft
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            on_epoch()
        return model

    return run


def torchdistill_config(epochs: int, batch: int) -> dict[str, Any]:
    """torchdistill's training config, loaded from YAML by its own loader (which resolves ``!import_get``)."""
    from torchdistill.common.yaml_util import load_yaml_file

    path = CACHE / f"torchdistill-kd-{epochs}-b{batch}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        TORCHDISTILL_YAML.format(
            epochs=epochs, batch=batch, lr=LR, temperature=KD["temperature"], alpha=1 - KD["alpha"]
        )
    )
    return load_yaml_file(str(path))["train"]


def torchdistill_contender(data: Data, teacher_model: nn.Module, augment: bool = False) -> Contender:
    """torchdistill's single-stage distillation box, driven by the loop of its example scripts.

    With ``augment`` each batch from its loader goes through the same batch transform raykd uses, drawn from the
    same seed, before ``forward_process`` (where its teacher and student both see it), so the views match raykd's.
    """
    from torch.utils.data import TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    dataset = TensorDataset(data.x[data.rows], data.y[data.rows])

    def run(seed: int, epochs: int, on_epoch: OnEpoch) -> nn.Module:
        model = student(data, seed)
        config = torchdistill_config(epochs, data.case.batch)
        box = get_distillation_box(
            teacher_model, model, {"train": dataset}, config, torch.device("cpu"), None, False, 1
        )
        views = augment_of(data, seed, augment)
        torch.manual_seed(seed)  # RandomSampler draws each epoch's order from the global generator
        for epoch in range(box.num_epochs):
            box.pre_epoch_process(epoch=epoch)
            for sample_batch, targets, supp_dict in box.train_data_loader:
                sample_batch = views(sample_batch) if views else sample_batch
                loss = box.forward_process(sample_batch, targets, supp_dict)
                box.post_forward_process(loss=loss)
            box.post_epoch_process()
            on_epoch()
        return model

    return run


def check_losses_agree(data: Data, teacher_model: nn.Module) -> float:
    """Largest gap between raykd's and torchdistill's KD loss on a few batches; fails unless the conventions match."""
    from torchdistill.losses.registry import get_high_level_loss

    criterion = get_high_level_loss(torchdistill_config(1, data.case.batch)["criterion"])
    method, gap, batch = KnowledgeDistillation(**KD), 0.0, data.case.batch
    with torch.no_grad():
        for seed in range(4):
            index = torch.as_tensor(data.rows[seed * batch : (seed + 1) * batch])
            s, t, y = student(data, seed)(data.x[index]), teacher_model(data.x[index]), data.y[index]
            ours = method.losses(StepLogits([s], [t]), y, torch.ones(len(y), dtype=torch.bool))["loss"]
            theirs = criterion({"student": {".": {"output": s}}, "teacher": {".": {"output": t}}}, {}, y)
            gap = max(gap, abs(float(ours - theirs)))
    assert gap < 1e-5, f"raykd and torchdistill KD losses differ by {gap}"
    return gap


def load_average() -> str:
    return "load average " + "/".join(f"{v:.2f}" for v in os.getloadavg())


Runs = tuple[dict[str, list[Timing]], dict[str, list[float]]]  # per-epoch timings, test accuracy per seed


def timed(contenders: dict[str, Contender], data: Data, warm_up: bool = True) -> Runs:
    """Per-epoch timings and each run's test accuracy, over one lockstep run per seed of the case.

    ``warm_up`` first runs a short 2-epoch lockstep (worth it when epochs are a fraction of a second; every
    run's first epoch is dropped in any case).
    """
    if warm_up:
        lockstep(contenders, 0, 2)
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    accs: dict[str, list[float]] = {name: [] for name in contenders}
    for seed in data.case.seeds:
        for name, (epochs, trained) in lockstep(contenders, seed, data.case.epochs).items():
            timings[name] += epochs
            accs[name].append(accuracy(trained, data.test_x, data.test_y))
    return timings, accs


def ratios(numerator: list[Timing], denominator: list[Timing]) -> str:
    """Median and quartiles of the ratios of neighbouring epochs, of wall and of CPU time."""
    parts = []
    for kind, i in (("wall", 0), ("CPU", 1)):
        q1, median, q3 = statistics.quantiles([a[i] / b[i] for a, b in zip(numerator, denominator, strict=True)], n=4)
        parts.append(f"{kind} {median:.3f} (quartiles {q1:.3f}-{q3:.3f})")
    return ", ".join(parts)


def medians(timings: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def versus_bare(title: str, data: Data, timings: dict[str, list[Timing]], started: str) -> None:
    """Samples/s of raykd and the bare loop, and raykd / bare epoch by epoch."""
    rates = {name: [len(data.rows) / t for t in medians(values)] for name, values in timings.items()}
    print(
        f"{title}, batch {data.case.batch}, {len(timings['raykd'])} epochs each. Median samples/s (wall, CPU): "
        f"raykd {rates['raykd'][0]:.0f}, {rates['raykd'][1]:.0f}; bare {rates['bare'][0]:.0f}, {rates['bare'][1]:.0f}. "
        f"raykd/bare: {ratios(timings['bare'], timings['raykd'])}. {started} at start, {load_average()} at end",
        flush=True,
    )


def versus_torchdistill(title: str, data: Data, model: nn.Module, gap: float, timings: dict[str, list[Timing]]) -> None:
    """Seconds per epoch of every contender, and torchdistill / each raykd contender epoch by epoch."""
    print(
        f"{title}, batch {data.case.batch}, T={KD['temperature']}, raykd alpha {KD['alpha']} = torchdistill "
        f"alpha {1 - KD['alpha']}, teacher test acc {100 * accuracy(model, data.test_x, data.test_y):.1f}%, "
        f"losses agree to {gap:.1e}; {len(timings['torchdistill'])} epochs each. Median s/epoch (wall, CPU): "
        + "; ".join(f"{name} {medians(values)[0]:.3f}, {medians(values)[1]:.3f}" for name, values in timings.items()),
        flush=True,
    )
    for name in (n for n in timings if n.startswith("raykd")):
        print(f"   torchdistill/{name} time per epoch: {ratios(timings['torchdistill'], timings[name])}", flush=True)


def print_accuracy(accs: dict[str, list[float]], data: Data, base: str = "torchdistill") -> None:
    """Test accuracy after each run, per seed and mean ± std; the difference to ``base`` in standard errors."""
    seeds, epochs = data.case.seeds, data.case.epochs
    for name, values in accs.items():
        spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
        line = (
            f"   {name}: test acc after {epochs} epochs, seeds {list(seeds)}: "
            f"{', '.join(f'{100 * a:.1f}' for a in values)} -> {100 * statistics.mean(values):.1f}{spread}%"
        )
        if name != base and base in accs and len(values) > 1:
            diff = statistics.mean(values) - statistics.mean(accs[base])
            error = ((statistics.variance(values) + statistics.variance(accs[base])) / len(seeds)) ** 0.5
            line += f"; {100 * diff:+.1f} points vs {base}"
            line += f" = {abs(diff) / error:.1f}x the difference's std error" if error > 0 else " (no spread)"
        print(line, flush=True)
