"""The top-k logit cache (``teacher.top_k``) against full cached logits on 100 classes.

    PYTHONPATH=$PWD python benchmarks/topk_cache.py

Data: a 100-class Gaussian mixture built here (``mixture``, handed to raykd as a ``package.module:function``
dataset): 20 superclasses of 5 subclasses each, so a teacher's dark knowledge sits mostly on a class's 4
siblings, as in CIFAR-100. Two IID nodes: node 1 (the teacher, a wide MLP) and node 0 (the student, a
narrow one) are pre-trained on their own shares; the student then distils the teacher on the unlabelled
pool with KD (T = 4, alpha = 0.5) through raykd's own path (``run_trial`` in ``teacher.mode: cache``), once
from full logits and once per K. Per K it reports, over 3 seeds (mean ± std):
- the KD term's relative error, L_K / L_full - 1 (signed), over the teacher's rows of the whole training split
  against the pre-trained student, at the temperature used; and the teacher's mass at T on the classes the
  cache dropped, as it was and as the expanded rows give it (they read as the smallest kept logit);
- the student's test accuracy after distillation (before, and plain CE on the same budget, for scale);
- cache bytes per row and in all, read from the cache files, and the share of memory saved.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raykd.config import ExperimentConfig, validate_config
from raykd.engine import predict
from raykd.experiment import run_trial
from raykd.methods.base import distillation_kl, soft_probabilities
from raykd.nodes import Setup, load_node, prepare
from raykd.teacher.cache import node_logits, read_rows

CLASSES, SUPERCLASSES = 100, 20
KD = {"temperature": 4.0, "alpha": 0.5}
TOP_K = (1, 5, 10, 20)
SEEDS = (0, 1, 2)


def mixture(dim: int = 32, train_per_class: int = 80, test_per_class: int = 20, seed: int = 0) -> tuple:
    """Superclass centres far apart, subclass centres near their superclass, unit Gaussian noise."""
    rng = np.random.default_rng(seed)
    supers = rng.normal(0, 1.0, (SUPERCLASSES, dim))
    means = np.repeat(supers, CLASSES // SUPERCLASSES, axis=0) + rng.normal(0, 0.45, (CLASSES, dim))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(CLASSES), per_class)
        return (means[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32), y

    return (*draw(train_per_class), *draw(test_per_class))


def experiment(cache: Path, top_k: int | None) -> ExperimentConfig:
    return validate_config(
        {
            "name": "topk",
            "seeds": list(SEEDS),
            "data": {"dataset": "benchmarks.topk_cache:mixture", "val_fraction": 0.1, "pool_fraction": 0.4},
            "partition": {"scheme": "iid", "num_nodes": 2},
            "nodes": {
                "cache_dir": str(cache),
                "model": {"name": "mlp", "width": 24, "depth": 1},
                "models": {1: {"name": "mlp", "width": 256, "depth": 2}},
                "train": {"epochs": 40, "batch_size": 128, "lr": 3e-3},
            },
            "transfer": {"student": 0, "teachers": [1], "set": "pool", "train": {"epochs": 15, "batch_size": 128}},
            "methods": [{"name": "kd", **KD}, {"name": "ce"}],
            "teacher": {"mode": "cache", "top_k": top_k},
        }
    )


def kd_errors(cfg: ExperimentConfig, setup: Setup, seed: int, full: torch.Tensor) -> dict[str, float]:
    """The KD term from K cached logits against the full-logit one (signed, relative), and the teacher mass on the
    dropped classes at T: as it was, and as the expanded rows give it."""
    records, _ = node_logits(cfg, setup, 1, seed)
    teacher = read_rows(records, np.arange(len(records)), CLASSES, torch.device("cpu"))
    student = predict(load_node(cfg, setup, 0, seed), setup.dataset.train_x)
    t, kept = KD["temperature"], torch.from_numpy(records["ids"].astype(np.int64))

    def kd(logits: torch.Tensor) -> float:
        return float(distillation_kl(soft_probabilities([logits], t), student, t).mean())

    def tail(logits: torch.Tensor) -> float:
        return 1 - float(soft_probabilities([logits], t).gather(1, kept).sum(1).mean())

    return {"kd_error": kd(teacher) / kd(full) - 1, "tail_true": tail(full), "tail_read": tail(teacher)}


def bytes_of(cfg: ExperimentConfig, setup: Setup, seed: int) -> tuple[int, int]:
    """The teacher entry's bytes per row (its payload) and its file's size."""
    array, _ = node_logits(cfg, setup, 1, seed)
    return array.itemsize * int(np.prod(array.shape[1:])), Path(array.filename).stat().st_size


def measure(cache: Path) -> dict[Any, dict[str, list[float]]]:
    """Every variant's numbers per seed: ``None`` is full logits, ``"ce"`` plain cross-entropy."""
    rows: dict[Any, dict[str, list[float]]] = {v: {} for v in (None, *TOP_K, "ce")}
    for seed in SEEDS:
        full_cfg = experiment(cache, None)
        setup = prepare(full_cfg, seed)
        full = torch.from_numpy(np.array(node_logits(full_cfg, setup, 1, seed)[0]))
        for variant in rows:
            cfg = full_cfg if variant in (None, "ce") else experiment(cache, variant)
            label = "ce" if variant == "ce" else "kd"
            result = run_trial(cfg, label, {} if label == "ce" else KD, seed)  # teacher.mode: cache
            numbers = {"test_acc": result["test_acc"], "test_acc_before": result["test_acc_before"]}
            if variant != "ce":
                numbers |= dict(zip(("row_bytes", "file_bytes"), bytes_of(cfg, setup, seed), strict=True))
            if variant not in (None, "ce"):
                numbers |= kd_errors(cfg, setup, seed, full)
            for name, value in numbers.items():
                rows[variant].setdefault(name, []).append(value)
        print(f"seed {seed} done", flush=True)
    return rows


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(rows: dict[Any, dict[str, list[float]]]) -> str:
    full_bytes = rows[None]["file_bytes"][0]
    lines = [
        "| cache | bytes / row | cache file | memory saved | KD term rel. error (T=4) "
        "| teacher mass on dropped classes (T=4): true -> as read | student test acc % |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, r in rows.items():
        if variant == "ce":
            lines.append(f"| no KD (plain CE, same budget) | - | - | - | - | - | {spread(r['test_acc'], 100)} |")
            continue
        name = "full logits" if variant is None else f"top-{variant}"
        error = "0 (reference)" if variant is None else f"{spread(r['kd_error'], 100)} %"
        mass = "-" if variant is None else f"{spread(r['tail_true'], 1, 3)} -> {spread(r['tail_read'], 1, 3)}"
        saved = f"{100 * (1 - r['file_bytes'][0] / full_bytes):.1f} %"
        lines.append(
            f"| {name} | {r['row_bytes'][0]:.0f} | {r['file_bytes'][0] / 1e3:.1f} kB | {saved} | {error} | {mass} "
            f"| {spread(r['test_acc'], 100)} |"
        )
    before = spread(rows[None]["test_acc_before"], 100)
    return "\n".join([*lines, f"\nStudent before distillation: {before} % (pre-trained on its own share)."])


def main() -> None:
    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        rows = measure(Path(cache))
    print(table(rows))
    print(f"\n{time.perf_counter() - started:.0f} s; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
