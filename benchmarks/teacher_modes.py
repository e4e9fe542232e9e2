"""Side-by-side measurements for the teacher server, the logit cache and Ray Train learners.

    python benchmarks/teacher_modes.py [throughput|sweep|learners|all|cifar]

Every comparison runs in this one process on the same data, models and seeds; results are ratios.
1. throughput: student samples/s with the teacher inline vs served (batch 256), for a teacher the
   student's size and for a large one (where the served teacher runs in parallel, prefetched).
2. sweep: wall time of an 8-trial KD sweep with a 4x+ teacher, inline vs cache, and teacher passes.
3. learners: Ray Train with 2 workers vs 1 on the same trial.
4. memory: peak RSS of the server (from 1) and of the cached sweep's trials (from 2).
5. cifar (not part of ``all``): 1. at CIFAR's shape, ResNet-20 served or inline for a ResNet-8, batch 128,
   random crop + flip, on synthetic images (run from the repository root: the dataset is
   ``benchmarks.cifar_data:synthetic``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from torch.utils.flop_counter import FlopCounterMode

from raykd.config import ExperimentConfig, ModelSpec, study_cells, validate_config
from raykd.experiment import run_trial
from raykd.files import file_digest
from raykd.models import build_model
from raykd.nodes import dataset_of, load_node, node_path, prepare
from raykd.teacher.server import served_model, start_server

CACHE = Path(tempfile.gettempdir()) / "raykd-bench-cache"
KD = {"temperature": 4.0, "alpha": 0.5}
TEACHER_WIDTH = 128  # the sweep's teacher: a 1-D CNN about 24x the student's FLOPs
SWEEP_EPOCHS = 30  # long enough that training, not Tune's fixed start-up, is what the sweep spends
AUGMENT = ["random_crop", "horizontal_flip"]
Variants = list[tuple[str, dict[str, Any], int]]  # (name, teacher section overrides, torch threads)


def experiment(teacher_width: int, **sections: Any) -> ExperimentConfig:
    raw = {
        "name": "bench",
        "seeds": [0],
        "data": {"dataset": "mnist1d", "pool_fraction": 0.6},  # a big pool: many full 256-row steps per epoch
        "partition": {"num_nodes": 4, "alpha": 0.5, "min_samples": 50},
        "nodes": {"cache_dir": str(CACHE), "models": {1: {"name": "cnn1d", "width": teacher_width}}},
        "transfer": {"set": "pool", "train": {"epochs": 6, "batch_size": 256, "lr": 0.003}},
        "methods": [{"name": "kd", **KD}],
    }
    raw.update(sections)
    return validate_config(raw)


def flops(spec: ModelSpec, shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter:
        build_model(spec, shape, 10)(torch.zeros(256, *shape))
    return counter.get_total_flops()


def load_average() -> str:
    return "load average " + "/".join(f"{v:.2f}" for v in os.getloadavg())


def steady_rate(cfg: ExperimentConfig, server: Any = None) -> float:
    """Mean student samples/s over epochs 2.. (epoch 1 warms up)."""
    history: list[dict[str, Any]] = []
    run_trial(cfg, "kd", KD, 0, report=history.append, server=server)
    return statistics.mean(h["samples_per_s"] for h in history[1:])


def compare_modes(cfg: ExperimentConfig, title: str, repeats: int, variants: Variants) -> None:
    """Median samples/s of each ``(name, teacher overrides, torch threads)`` variant over alternating repeats, so
    drift in machine load hits every variant alike; every served variant shares one TeacherServer."""
    setup = prepare(cfg, 0)
    for n in cfg.node_ids():
        load_node(cfg, setup, n, 0)  # node pre-training is not what is compared
    shape = dataset_of(cfg).input_shape
    ratio = flops(cfg.nodes.model_of(1), shape) / flops(cfg.nodes.model_of(0), shape)
    path = node_path(cfg, 1, 0)
    server = start_server([served_model(file_digest(path), path, cfg.nodes.model_of(1), shape, 10)], cfg.teacher)
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    started = load_average()
    for _ in range(repeats):
        for name, teacher, threads in variants:
            torch.set_num_threads(threads)
            run_cfg = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update=teacher)})
            rates[name].append(steady_rate(run_cfg, server if teacher.get("mode") == "server" else None))
    stats = server.stats()
    server.kill()
    median = {name: statistics.median(values) for name, values in rates.items()}
    inline = [name for name in median if name.startswith("inline")]
    print(
        f"{title} ({ratio:.1f}x the student's FLOPs), batch {cfg.transfer.train.batch_size}, median samples/s of "
        f"{repeats}: "
        + ", ".join(f"{name} {rate:.0f}" for name, rate in median.items())
        + "; "
        + ", ".join(f"{s}/{i} = {median[s] / median[i]:.2f}" for s in median if s.startswith("server") for i in inline)
        + f"; server: mean batch {stats['mean_batch_rows']:.0f} rows, compute {stats['compute_s']:.1f}s, "
        f"queueing {stats['wait_s']:.1f}s, peak RSS {stats['peak_rss_mb']:.0f} MB; {started} at start, "
        f"{load_average()} at end",
        flush=True,
    )


SERVED: Variants = [
    ("inline-1", {}, 1),
    ("inline-2", {}, 2),
    ("server", {"mode": "server"}, 1),
    ("server-no-prefetch", {"mode": "server", "prefetch": 0}, 1),
]
CIFAR_SERVED: Variants = [  # the 2-thread inline run left out: the goal is against one thread, and time is short
    ("inline-1", {}, 1),
    ("server", {"mode": "server"}, 1),
    ("server-prefetch-2", {"mode": "server", "prefetch": 2}, 1),
    ("server-no-prefetch", {"mode": "server", "prefetch": 0}, 1),
]


def throughput(repeats: int = 3) -> None:
    """The MNIST-1D student with a teacher its own size and with one 94x its FLOPs."""
    for width in (25, 256):
        compare_modes(experiment(width), f"teacher width {width}", repeats, SERVED)


def cifar(repeats: int = 2) -> None:
    """The same comparison at CIFAR's shape: ResNet-20 served or inline for a ResNet-8, batch 128, crop + flip.

    Synthetic 32x32x3 images (``benchmarks/cifar_data.py``), two IID nodes pre-trained briefly (what is timed is
    the transfer), 3 transfer epochs per run (the first warms up): 128 labelled + 128 pool rows per step.
    """
    cfg = experiment(
        0,
        data={"dataset": "benchmarks.cifar_data:synthetic", "pool_fraction": 0.4, "augment": AUGMENT},
        partition={"scheme": "iid", "num_nodes": 2},
        nodes={
            "cache_dir": str(CACHE),
            "model": {"name": "resnet", "depth": 8},
            "models": {1: {"name": "resnet", "depth": 20}},
            "train": {"epochs": 2, "batch_size": 128, "lr": 0.003},
        },
        transfer={"set": "pool", "train": {"epochs": 3, "batch_size": 128, "lr": 0.003}},
    )
    compare_modes(cfg, "CIFAR shape, ResNet-20 teacher -> ResNet-8", repeats, CIFAR_SERVED)


def sweep() -> None:
    from raykd.config import written_folders
    from raykd.preflight import Plan
    from raykd.sweep.run import run_sweep

    times = {}
    for mode in ("inline", "cache"):
        cfg = experiment(
            TEACHER_WIDTH,
            teacher={"mode": mode},
            methods=[{"name": "kd", "temperature": [1, 2, 4, 8], "alpha": [0.25, 0.75]}],
            tracking={"uri": f"sqlite:///{CACHE / 'bench-mlflow.db'}"},
            output_dir=str(CACHE / "runs"),
            transfer={"set": "pool", "train": {"epochs": SWEEP_EPOCHS, "batch_size": 256}},
        )
        setup = prepare(cfg, 0)
        for n in cfg.node_ids():
            load_node(cfg, setup, n, 0)  # node pre-training is not what is compared
        if mode == "cache":  # a cold cache: the one teacher pass is part of the cached sweep's time
            for f in (CACHE / "logits").glob("*"):
                f.unlink()
        started = time.perf_counter()
        uri = f"sqlite:///{CACHE / 'bench-mlflow.db'}"
        out = run_sweep(Plan(cfg, study_cells(cfg), uri, written_folders(cfg))).out
        times[mode] = time.perf_counter() - started
        trials = __import__("pandas").read_csv(out / "trials.csv")
        steps = -(-len(setup.splits.pool) // 256)  # one teacher forward per step (on 256 labelled + 256 pool rows)
        passes = 8 * cfg.transfer.train.epochs * steps if mode == "inline" else 1
        print(
            f"sweep {mode}: {times[mode]:.1f}s wall for 8 trials; teacher forward passes: {passes} "
            f"({'batches of 512 rows' if mode == 'inline' else 'pass over the 4,000-row training split'}); "
            f"peak trial RSS {trials['peak_rss_mb'].max():.0f} MB",
            flush=True,
        )
    shape = (1, 40)
    ratio = flops(ModelSpec(name="cnn1d", width=TEACHER_WIDTH), shape) / flops(ModelSpec(name="cnn1d"), shape)
    print(
        f"sweep: cache is {times['inline'] / times['cache']:.2f}x faster than inline (teacher {ratio:.1f}x "
        "the student's FLOPs)",
        flush=True,
    )


def learners() -> None:
    from raykd.learners import run_on_learners

    rates = {}
    for workers in (1, 2):
        cfg = experiment(
            25,
            teacher={"mode": "cache"},
            learners={"num_workers": workers},
            transfer={"set": "pool", "train": {"epochs": 6, "batch_size": 256}},
        )
        started = time.perf_counter()
        metrics = run_on_learners(cfg, "kd", KD, 0, Path(tempfile.mkdtemp()))
        wall = time.perf_counter() - started
        rates[workers] = metrics["samples_per_s"] * workers  # each worker reports its own shard's rate
        print(
            f"learners {workers}: {rates[workers]:.0f} samples/s in steady state, {wall:.1f}s wall "
            f"(with Ray Train start-up), test acc {100 * metrics['test_acc']:.1f}%",
            flush=True,
        )
    print(f"learners: 2 workers / 1 worker throughput = {rates[2] / rates[1]:.2f}", flush=True)


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    for name, bench in (("throughput", throughput), ("sweep", sweep), ("learners", learners), ("cifar", cifar)):
        if which == name or (which == "all" and name != "cifar"):
            bench()
