"""Side-by-side measurements for the teacher server, the logit cache and Ray Train learners.

    python benchmarks/teacher_modes.py [throughput|sweep|learners|all]

Every comparison runs in this one process on the same data, models and seeds; results are ratios.
1. throughput: student samples/s with the teacher inline vs served (batch 256), for a teacher the
   student's size and for a large one (where the served teacher runs in parallel, prefetched).
2. sweep: wall time of an 8-trial KD sweep with a 4x+ teacher, inline vs cache, and teacher passes.
3. learners: Ray Train with 2 workers vs 1 on the same trial.
4. memory: peak RSS of the server (from 1) and of the cached sweep's trials (from 2).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch
from torch.utils.flop_counter import FlopCounterMode

from raykd.config import ExperimentConfig, ModelSpec, validate_config
from raykd.experiment import run_trial
from raykd.files import file_digest
from raykd.models import build_model
from raykd.nodes import dataset_of, load_node, node_path, prepare
from raykd.teacher_server import logit_source, served_model, start_server

CACHE = Path(tempfile.gettempdir()) / "raykd-bench-cache"
KD = {"temperature": 4.0, "alpha": 0.5}
TEACHER_WIDTH = 128  # the sweep's teacher: a 1-D CNN about 24x the student's FLOPs
SWEEP_EPOCHS = 30  # long enough that training, not Tune's fixed start-up, is what the sweep spends


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


def steady_rate(cfg: ExperimentConfig, server: Any = None) -> float:
    """Mean student samples/s over epochs 2.. (epoch 1 warms up)."""
    history: list[dict[str, Any]] = []
    run_trial(cfg, "kd", KD, 0, report=history.append, source=logit_source(cfg, prepare(cfg, 0), 0, server))
    return statistics.mean(h["samples_per_s"] for h in history[1:])


def throughput(repeats: int = 3) -> None:
    """Median samples/s over alternating repeats, so drift in machine load hits every variant alike."""
    for width in (25, 256):
        cfg = experiment(width)
        setup = prepare(cfg, 0)
        for n in cfg.node_ids():
            load_node(cfg, setup, n, 0)
        shape = dataset_of(cfg).input_shape
        ratio = flops(cfg.nodes.model_of(1), shape) / flops(cfg.nodes.model_of(0), shape)
        served = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update={"mode": "server"})})
        unfetched = served.model_copy(update={"teacher": served.teacher.model_copy(update={"prefetch": False})})
        path = node_path(cfg, 1, 0)
        server = start_server([served_model(file_digest(path), path, cfg.nodes.model_of(1), shape, 10)], served.teacher)
        rates: dict[str, list[float]] = {"inline-1": [], "inline-2": [], "server": [], "server-no-prefetch": []}
        for _ in range(repeats):
            for name, run_cfg, threads, handle in (
                ("inline-1", cfg, 1, None),
                ("inline-2", cfg, 2, None),
                ("server", served, 1, server),
                ("server-no-prefetch", unfetched, 1, server),
            ):
                torch.set_num_threads(threads)
                rates[name].append(steady_rate(run_cfg, handle))
        stats = ray.get(server.stats.remote())
        ray.kill(server)
        median = {name: statistics.median(values) for name, values in rates.items()}
        print(
            f"teacher width {width} ({ratio:.1f}x the student's FLOPs), batch 256, median samples/s of {repeats}: "
            + ", ".join(f"{name} {rate:.0f}" for name, rate in median.items())
            + f"; server/inline-1 = {median['server'] / median['inline-1']:.2f}, "
            f"server/inline-2 = {median['server'] / median['inline-2']:.2f}, "
            f"no-prefetch/inline-1 = {median['server-no-prefetch'] / median['inline-1']:.2f}; "
            f"server: mean batch {stats['mean_batch_rows']:.0f} rows, compute {stats['compute_s']:.1f}s, "
            f"queueing {stats['wait_s']:.1f}s, peak RSS {stats['peak_rss_mb']:.0f} MB",
            flush=True,
        )


def sweep() -> None:
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
        out, _ = run_sweep(cfg, f"sqlite:///{CACHE / 'bench-mlflow.db'}")
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
    for name, bench in (("throughput", throughput), ("sweep", sweep), ("learners", learners)):
        if which in (name, "all"):
            bench()
