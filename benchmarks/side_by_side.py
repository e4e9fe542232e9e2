"""Side-by-side speed of raykd's training engine against a bare PyTorch loop and against torchdistill.

    python benchmarks/side_by_side.py [bare|cached|torchdistill|all]

Every contender runs in this one process, on one torch thread, on the same MNIST-1D rows (the training
split minus validation, cut to whole batches), the same models and seeds, batch size, epochs and Adam
learning rate. The contenders of a comparison train in lockstep: each in its own thread, one epoch at a
time in turn (only one thread ever runs), the turn order rotating with the seed. So neighbouring epochs of
different contenders are a fraction of a second apart, load from other processes hits them alike, and the
per-epoch ratios against the baseline stay meaningful; each run's first epoch is warm-up and not counted.
Wall and CPU (this thread's) time are both reported, with the machine's load average.
1. bare: raykd's ``fit`` with ``CrossEntropy`` over ``TransferBatches`` vs a hand-written loop (shuffled
   index batches, ``model(x)``, ``F.cross_entropy``, Adam step). Student samples/s, raykd / bare.
2. cached: raykd KD with cached teacher logits (``CachedReferences`` over the memory-mapped ``LogitCache``,
   what ``teacher.mode: cache`` uses) vs a hand-written loop indexing a precomputed logit tensor with a
   hand-written KD loss. Student samples/s, raykd / bare; and the CPU cost of the KD loss alone, forward and
   backward, raykd's method vs the hand-written expression.
3. torchdistill: raykd KD (teacher inline, and cached) vs torchdistill's ``DistillationBox`` with its
   ``KDLoss``, built from a YAML config the way its users write one, same teacher (a cnn1d 6x the student's
   FLOPs). Time per epoch, torchdistill / raykd, and test accuracy after the lockstep runs, one per seed.
   raykd's ``alpha`` weights the KD term and torchdistill's the CE term, so torchdistill gets
   ``alpha = 1 - alpha`` (its ``beta`` defaults to ``1 - alpha``, which is raykd's alpha); the script
   checks that the two losses agree on a few batches before timing anything.
"""

from __future__ import annotations

import os
import statistics
import sys
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

from raykd.config import ModelSpec, validate_config
from raykd.engine import (
    InlineReferences,
    References,
    TransferBatches,
    accuracy,
    fit,
    predict,
    seed_everything,
)
from raykd.logit_cache import CachedReferences, LogitCache
from raykd.methods.base import Method, StepLogits
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.nodes import prepare

CACHE = Path(tempfile.gettempdir()) / "raykd-side-by-side"
THREADS = 1  # one core per run: the other core absorbs whatever else the machine is doing
BATCH = 64  # raykd's default transfer batch: small steps are where per-step overhead shows
LR = 3e-3
KD = {"temperature": 4.0, "alpha": 0.5}  # raykd's convention: alpha weights the KD term
STUDENT = ModelSpec(name="cnn1d")  # the MNIST-1D reference CNN, about 5k weights
TEACHER = ModelSpec(name="cnn1d", width=64)  # about 6x the student's FLOPs
TEACHER_EPOCHS = 30
SEEDS = (0, 1, 2, 3)  # one lockstep run per seed; the first turn rotates with it
EPOCHS = 21  # per run: one warm-up epoch, then 20 timed ones; 3.'s accuracy is read after these

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
class Data:
    """The rows every contender trains on, and the fixed test split."""

    x: Tensor
    y: Tensor
    rows: np.ndarray
    test_x: Tensor
    test_y: Tensor
    shape: tuple[int, ...]
    classes: int


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
    rows = rows[: len(rows) - len(rows) % BATCH]  # whole batches only: every contender does the same steps
    return Data(data.train_x, data.train_y, rows, data.test_x, data.test_y, data.input_shape, data.num_classes)


def student(data: Data, seed: int) -> nn.Module:
    """A fresh student; the same seed gives every contender the same initial weights."""
    torch.manual_seed(seed)
    return build_model(STUDENT, data.shape, data.classes)


def teacher(data: Data) -> tuple[nn.Module, Path]:
    """The wider cnn1d teacher, trained once with raykd on the same rows and kept on disk."""
    path = CACHE / f"teacher-cnn1d-w{TEACHER.width}-e{TEACHER_EPOCHS}.pt"
    seed_everything(0)
    model = build_model(TEACHER, data.shape, data.classes)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        batches = TransferBatches(data.x, data.y, data.rows, None, BATCH, False, 0)
        fit([model], CrossEntropy(), batches, TEACHER_EPOCHS, LR)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval().requires_grad_(False), path


def cached_logits(model: nn.Module, path: Path, data: Data) -> np.ndarray:
    """The teacher's logits on the training split from raykd's logit cache (memory-mapped), as cache mode reads them."""
    cache = LogitCache(CACHE / "logits")
    return cache.get_or_build(cache.key(path, "mnist1d", "train", "float32"), lambda: predict(model, data.x).numpy())[0]


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


def raykd_contender(data: Data, method: Method, references: References | None = None) -> Contender:
    """raykd's engine as a trial uses it: ``TransferBatches`` (distillation on every row) and ``fit``."""

    def run(seed: int, epochs: int, on_epoch: OnEpoch) -> nn.Module:
        model = student(data, seed)
        batches = TransferBatches(data.x, data.y, data.rows, None, BATCH, distill_labelled=True, seed=seed)
        fit([model], method, batches, epochs, LR, references=references, on_epoch=on_epoch)
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
            for index in rows[torch.randperm(len(rows), generator=generator)].split(BATCH):
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


def torchdistill_config(epochs: int) -> dict[str, Any]:
    """torchdistill's training config, loaded from YAML by its own loader (which resolves ``!import_get``)."""
    from torchdistill.common.yaml_util import load_yaml_file

    path = CACHE / f"torchdistill-kd-{epochs}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        TORCHDISTILL_YAML.format(
            epochs=epochs, batch=BATCH, lr=LR, temperature=KD["temperature"], alpha=1 - KD["alpha"]
        )
    )
    return load_yaml_file(str(path))["train"]


def torchdistill_contender(data: Data, teacher_model: nn.Module) -> Contender:
    """torchdistill's single-stage distillation box, driven by the loop of its example scripts."""
    from torch.utils.data import TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    dataset = TensorDataset(data.x[data.rows], data.y[data.rows])

    def run(seed: int, epochs: int, on_epoch: OnEpoch) -> nn.Module:
        model = student(data, seed)
        box = get_distillation_box(
            teacher_model, model, {"train": dataset}, torchdistill_config(epochs), torch.device("cpu"), None, False, 1
        )
        torch.manual_seed(seed)  # RandomSampler draws each epoch's order from the global generator
        for epoch in range(box.num_epochs):
            box.pre_epoch_process(epoch=epoch)
            for sample_batch, targets, supp_dict in box.train_data_loader:
                loss = box.forward_process(sample_batch, targets, supp_dict)
                box.post_forward_process(loss=loss)
            box.post_epoch_process()
            on_epoch()
        return model

    return run


def load_average() -> str:
    return "load average " + "/".join(f"{v:.2f}" for v in os.getloadavg())


def timed(contenders: dict[str, Contender]) -> dict[str, list[Timing]]:
    """Per-epoch timings of every contender over one lockstep run per seed, after a short warm-up run."""
    lockstep(contenders, 0, 2)
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    for seed in SEEDS:
        for name, (epochs, _) in lockstep(contenders, seed, EPOCHS).items():
            timings[name] += epochs
    return timings


def ratios(numerator: list[Timing], denominator: list[Timing]) -> str:
    """Median and quartiles of the ratios of neighbouring epochs, of wall and of CPU time."""
    parts = []
    for kind, i in (("wall", 0), ("CPU", 1)):
        q1, median, q3 = statistics.quantiles([a[i] / b[i] for a, b in zip(numerator, denominator, strict=True)], n=4)
        parts.append(f"{kind} {median:.3f} (quartiles {q1:.3f}-{q3:.3f})")
    return ", ".join(parts)


def medians(timings: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def versus_bare(title: str, data: Data, contenders: dict[str, Contender]) -> None:
    """Samples/s of raykd and the bare loop, and raykd / bare epoch by epoch."""
    started = load_average()
    timings = timed(contenders)
    rates = {name: [len(data.rows) / t for t in medians(values)] for name, values in timings.items()}
    print(
        f"{title}, batch {BATCH}, {len(timings['raykd'])} epochs each. Median samples/s (wall, CPU): "
        f"raykd {rates['raykd'][0]:.0f}, {rates['raykd'][1]:.0f}; bare {rates['bare'][0]:.0f}, {rates['bare'][1]:.0f}. "
        f"raykd/bare: {ratios(timings['bare'], timings['raykd'])}. {started} at start, {load_average()} at end",
        flush=True,
    )


def bare(data: Data) -> None:
    versus_bare(
        "1. cross-entropy", data, {"raykd": raykd_contender(data, CrossEntropy()), "bare": bare_contender(data)}
    )


def loss_cost(data: Data, teacher_logits: Tensor) -> tuple[float, float]:
    """CPU microseconds of one batch's KD loss, forward and backward: raykd's method vs the bare loop's expression.

    Locates the part of 2.'s gap that is the method's loss code rather than the engine.
    """
    index = torch.as_tensor(data.rows[:BATCH])
    logits = student(data, 0)(data.x[index]).detach().requires_grad_(True)
    target, y, mask = teacher_logits[index], data.y[index], torch.ones(BATCH, dtype=torch.bool)
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
    model, path = teacher(data)
    logits = cached_logits(model, path, data)
    dense = torch.from_numpy(np.array(logits))
    contenders = {
        "raykd": raykd_contender(data, KnowledgeDistillation(**KD), CachedReferences([logits], classes=data.classes)),
        "bare": bare_contender(data, dense),
    }
    versus_bare("2. KD with cached teacher logits", data, contenders)
    ours, theirs = loss_cost(data, dense)
    print(f"   KD loss forward+backward, CPU per batch: raykd's method {ours:.0f} us, bare {theirs:.0f} us", flush=True)


def check_losses_agree(data: Data, teacher_model: nn.Module) -> float:
    """Largest gap between raykd's and torchdistill's KD loss on a few batches: the conventions must match."""
    from torchdistill.losses.registry import get_high_level_loss

    criterion = get_high_level_loss(torchdistill_config(1)["criterion"])
    method, gap = KnowledgeDistillation(**KD), 0.0
    with torch.no_grad():
        for seed in SEEDS:
            index = torch.as_tensor(data.rows[seed * BATCH : (seed + 1) * BATCH])
            s, t, y = student(data, seed)(data.x[index]), teacher_model(data.x[index]), data.y[index]
            ours = method.losses(StepLogits([s], [t]), y, torch.ones(len(y), dtype=torch.bool))["loss"]
            theirs = criterion({"student": {".": {"output": s}}, "teacher": {".": {"output": t}}}, {}, y)
            gap = max(gap, abs(float(ours - theirs)))
    return gap


def torchdistill(data: Data) -> None:
    started = load_average()
    model, path = teacher(data)
    gap = check_losses_agree(data, model)
    assert gap < 1e-5, f"raykd and torchdistill KD losses differ by {gap}"
    method = KnowledgeDistillation(**KD)
    contenders = {
        "torchdistill": torchdistill_contender(data, model),
        "raykd-inline": raykd_contender(data, method, InlineReferences([model])),
        "raykd-cache": raykd_contender(
            data, method, CachedReferences([cached_logits(model, path, data)], classes=data.classes)
        ),
    }
    lockstep(contenders, 0, 2)
    timings: dict[str, list[Timing]] = {name: [] for name in contenders}
    accs: dict[str, list[float]] = {name: [] for name in contenders}
    for seed in SEEDS:
        for name, (epochs, trained) in lockstep(contenders, seed, EPOCHS).items():
            timings[name] += epochs
            accs[name].append(accuracy(trained, data.test_x, data.test_y))
    print(
        f"3. KD vs torchdistill, batch {BATCH}, T={KD['temperature']}, raykd alpha {KD['alpha']} = torchdistill "
        f"alpha {1 - KD['alpha']}, teacher test acc {100 * accuracy(model, data.test_x, data.test_y):.1f}%, "
        f"losses agree to {gap:.1e}; {len(timings['torchdistill'])} epochs each. Median s/epoch (wall, CPU): "
        + "; ".join(f"{name} {medians(values)[0]:.3f}, {medians(values)[1]:.3f}" for name, values in timings.items()),
        flush=True,
    )
    for name in ("raykd-inline", "raykd-cache"):
        print(f"   torchdistill/{name} time per epoch: {ratios(timings['torchdistill'], timings[name])}", flush=True)
    base = accs["torchdistill"]
    for name, values in accs.items():
        line = (
            f"   {name}: test acc after {EPOCHS} epochs, seeds {list(SEEDS)}: "
            f"{', '.join(f'{100 * a:.1f}' for a in values)} -> "
            f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}%"
        )
        if name != "torchdistill":
            diff = statistics.mean(values) - statistics.mean(base)
            error = ((statistics.variance(values) + statistics.variance(base)) / len(SEEDS)) ** 0.5
            line += f"; {100 * diff:+.1f} points vs torchdistill = {abs(diff) / error:.1f}x the difference's std error"
        print(line, flush=True)
    print(f"   {started} at start, {load_average()} at end", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    benches = {"bare": bare, "cached": cached, "torchdistill": torchdistill}
    if which not in (*benches, "all"):
        sys.exit(f"usage: python benchmarks/side_by_side.py [{'|'.join(benches)}|all]")
    torch.set_num_threads(THREADS)
    data = load()
    for name, bench in benches.items():
        if which in (name, "all"):
            bench(data)
