"""After the sweep: the configured Flower simulation once per seed and distinct partition of the study's cells."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import ray
import yaml

from raykd.cluster import run_simulation_child
from raykd.config import Cell, ExperimentConfig, cell_key
from raykd.files import write_atomic


def shaping_axes(cfg: ExperimentConfig) -> list[str]:
    """Axes that change the partition (anything but ``transfer.*``): cells that differ only elsewhere share one."""
    return [a for a, vs in cfg.axes.items() if any(not k.startswith("transfer.") for o in vs.values() for k in o)]


def federated_followup(
    cfg: ExperimentConfig, cells: list[Cell], out: Path, uri: str, parent_run_id: str
) -> tuple[pd.DataFrame, list[str]]:
    """Run the simulations; returns one row per (cell, seed, start), and the axes that shape the partitions.

    Each simulation is a child driver joined to this cluster (Flower shuts Ray down when it ends) and its
    MLflow run nests under the sweep's; a failed one is recorded with its error and the others still run.
    """
    shaping = shaping_axes(cfg)
    runs: dict[str, Cell] = {}
    for cell in cells:
        runs.setdefault(cell_key({a: cell.variants[a] for a in shaping}), cell)
    wait_for_free_cpus()
    rows, done, total = [], 0, len(runs) * len(cfg.seeds)
    for name, cell in runs.items():
        variants = {a: cell.variants[a] for a in shaping}
        folder = out / "federated" / (name.replace(",", "_").replace("=", "-") or cfg.name)
        write_atomic(folder / "config.yaml", yaml.safe_dump(cell.config.model_dump(mode="json"), sort_keys=False))
        for seed in cfg.seeds:
            sets = [f"seeds=[{seed}]", f"tracking.uri={uri}", f"tracking.parent_run_id={parent_run_id}"]
            args = ["--config", str(folder / "config.yaml"), *(a for s in sets for a in ("--set", s))]
            done += 1
            where = f"[federated {done}/{total}] {name or cfg.name} seed={seed}"
            try:
                starts = run_simulation_child(args, folder / f"seed{seed}", str(Path.cwd()))["starts"]
            except RuntimeError as err:
                rows.append({**variants, "seed": seed, "start": "-", "error": str(err)[:300]})
                print(f"{where}: FAILED: {err}", flush=True)
                continue
            rows += [{**variants, "seed": seed, "start": k, **v, "error": ""} for k, v in starts.items()]
            rounds = {k: "never" if v["rounds_to_target"] is None else v["rounds_to_target"] for k, v in starts.items()}
            reached = ", ".join(f"{k} {n}" for k, n in rounds.items())
            print(f"{where}: rounds to {100 * cfg.federated.target_acc:.0f}%: {reached}", flush=True)
    return pd.DataFrame(rows), shaping


def wait_for_free_cpus(timeout_s: float = 60) -> None:
    """Wait until the finished sweep's actors have released their CPUs: Flower's pool needs all of them."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
