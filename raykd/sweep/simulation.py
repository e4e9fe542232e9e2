"""A sweep's trial when ``tune.trial: simulation``: one whole Flower simulation at one setting and seed.

The method row (at the trial's setting) is the clients' loss, the cell's config the federation; the simulation runs
as a child driver joined to the sweep's cluster (``raykd.launch``), its MLflow run nested under the sweep's, its
records in ``simulations/`` of the sweep's folder. The trial reports the global model's scores as a transfer
trial reports its student's: validation (what the report chooses on) and test, each against round 0 (``gain``),
so the sweep's tables, paired intervals, searchers and ``--resume`` serve simulations unchanged.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raykd.cluster import on_this_node
from raykd.config import ExperimentConfig, cell_key, validate_config
from raykd.files import safe_component
from raykd.launch import launch_simulation
from raykd.sweep.state import finished_result
from raykd.sweep.students import setting_name, trial_student
from raykd.sweep.trial import raise_planned_faults

#: The sweep folder's home of its simulations' records.
SIMULATIONS = "simulations"


def simulation_trainable(
    config: dict[str, Any], cells: dict[str, ExperimentConfig], sweep_dir: str, uri: str, parent_run_id: str, cwd: str
) -> None:
    """One simulation trial; a simulation that lost client updates fails the trial (its records are kept), so a
    setting is never chosen on a federation that did not run as configured. The child runs in the sweep's working
    folder ``cwd``, where the user's ``package.module:name`` references import from, not in the trial's."""
    recorded = finished_result(Path(sweep_dir), config)
    if recorded is not None:  # it finished before a killed driver's Tune state was saved
        tune.report(recorded)
        return
    cell = config.get("cell", {})
    cfg, arm, seed = cells[cell_key(cell)], config["arm"], config["seed"]
    raise_planned_faults(cfg, sweep_dir, arm["label"], seed)
    setting = {k: v for k, v in arm.items() if k not in ("label", "method")}
    names = [cell_key(cell) or "-", arm["label"], setting_name(setting), f"seed{seed}"]
    folder = Path(sweep_dir, SIMULATIONS, *map(safe_component, names))
    shutil.rmtree(folder, ignore_errors=True)  # a retried trial starts its records afresh
    run_cfg = simulation_config(cfg, arm, seed, uri, parent_run_id)
    sim = launch_simulation(run_cfg, folder, ray.get_runtime_context().gcs_address, cwd=Path(cwd))
    if sim.lost:
        raise RuntimeError(f"the simulation did not run as configured: {sim.lost} (records in {folder})")
    model = folder / "global_model.pt"
    if model.is_file():  # logit-exchange's products are the clients' private models, in its records
        student = trial_student(Path(sweep_dir), cell, arm["label"], setting, seed)
        student.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model, student)
    tune.report(on_this_node(simulation_metrics(sim.final, cfg.federated.rounds)))


def simulation_config(
    cfg: ExperimentConfig, arm: dict[str, Any], seed: int, uri: str, parent_run_id: str
) -> ExperimentConfig:
    """The cell's config with the trial's row (at its setting) as the only one, its seed, and its MLflow run nested
    under the sweep's."""
    raw = cfg.model_dump(mode="json")
    (row,) = [r for r, m in zip(raw["methods"], cfg.methods, strict=True) if m.display() == arm["label"]]
    setting = {k: v for k, v in arm.items() if k not in ("label", "method")}
    raw |= {"methods": [{**row, **setting}], "seeds": [seed]}
    raw["tracking"] |= {"uri": uri, "parent_run_id": parent_run_id}
    return validate_config(raw)


def simulation_metrics(final: dict[str, Any], rounds: int) -> dict[str, float]:
    """A simulation's summary as a trial's metrics: the global model's final validation and test scores, their gains
    over round 0 (a text's: in nats per token), the rounds as its epochs, and what it cost in bytes."""

    def number(key: str) -> float:
        value = final.get(key)
        return float("nan") if value is None else float(value)

    out = {
        "val_acc": number("final_val_acc"),
        "test_acc": number("final_test_acc"),
        "test_acc_before": number("start_test_acc"),
        "gain": number("final_test_acc") - number("start_test_acc"),
        "val_gain": number("final_val_acc") - number("start_val_acc"),
        "epoch": rounds,
        "rounds_to_target": number("rounds_to_target"),
        "bytes_down": number("total_bytes_down"),
        "bytes_up": number("total_bytes_up"),
        "teacher_bytes": number("total_teacher_bytes"),
    }
    if "final_test_ppl" in final:
        out |= {
            "val_ppl": number("final_val_ppl"),
            "test_ppl": number("final_test_ppl"),
            "test_ppl_before": number("start_test_ppl"),
            "gain": math.log(number("start_test_ppl")) - math.log(number("final_test_ppl")),
            "val_gain": math.log(number("start_val_ppl")) - math.log(number("final_val_ppl")),
        }
    return out
