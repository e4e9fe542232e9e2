"""After the sweep: the configured Flower simulation once per seed and distinct partition of the study's cells."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import ray
from matplotlib.figure import Figure

from raykd import report
from raykd.cells import by_cell, cell_name
from raykd.config import Cell, ExperimentConfig, cell_key
from raykd.launch import launch_simulation


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
    address = ray.get_runtime_context().gcs_address
    for name, cell in runs.items():
        variants = {a: cell.variants[a] for a in shaping}
        folder = out / "federated" / (name.replace(",", "_").replace("=", "-") or cfg.name)
        for seed in cfg.seeds:
            tracking = {"uri": uri, "parent_run_id": parent_run_id}
            run_cfg = cell.config.model_copy(
                update={"seeds": [seed], "tracking": cell.config.tracking.model_copy(update=tracking)}
            )
            done += 1
            where = f"[federated {done}/{total}] {name or cfg.name} seed={seed}"
            try:
                summary = launch_simulation(run_cfg, folder / f"seed{seed}", address).summary
            except RuntimeError as err:
                rows.append({**variants, "seed": seed, "start": "-", "error": str(err)[:300], "lost": ""})
                print(f"{where}: FAILED: {err}", flush=True)
                continue
            starts, lost = summary["starts"], summary.get("lost") or ""
            rows += [{**variants, "seed": seed, "start": k, **v, "error": "", "lost": lost} for k, v in starts.items()]
            rounds = {k: "never" if v["rounds_to_target"] is None else v["rounds_to_target"] for k, v in starts.items()}
            reached = ", ".join(f"{k} {n}" for k, n in rounds.items())
            note = f" (LOST: {lost})" if lost else ""
            print(f"{where}: rounds to {100 * cfg.federated.target_acc:.0f}%: {reached}{note}", flush=True)
    return pd.DataFrame(rows), shaping


def failed_simulations(rounds: pd.DataFrame, axes: list[str]) -> int:
    """Simulations that failed, or finished but lost client updates (each once, not once per start point)."""
    bad = rounds[(rounds["error"] != "") | (rounds["lost"] != "")]
    return len(bad.drop_duplicates([*axes, "seed"]))


def wait_for_free_cpus(timeout_s: float = 60) -> None:
    """Wait until the finished sweep's actors have released their CPUs: Flower's pool needs all of them."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)


def federated_section(cfg: ExperimentConfig, rounds: pd.DataFrame, axes: list[str]) -> tuple[str, Figure]:
    """The follow-up simulations (``federated.after_sweep``): rounds to target accuracy per start, over seeds.

    Rounds are averaged over the seeds that reached the target; fewer-rounds percentages are paired per
    seed (a start against the random start of the same seed), then averaged.
    """
    f = cfg.federated
    ok = rounds[rounds["error"] == ""]
    rows, bars = [], []
    for cell, part in by_cell(ok, axes):
        for start, group in part.groupby("start", sort=False):
            reached = group["rounds_to_target"].dropna()
            saved = group.get("fewer_rounds_than_random_pct", pd.Series(dtype=float)).dropna()
            rows.append(
                {
                    **cell,
                    "start": start,
                    "start acc %": report.pct(group["start_test_acc"].mean(), group["start_test_acc"].std(ddof=0)),
                    f"final acc % (round {f.rounds})": report.pct(
                        group["final_test_acc"].mean(), group["final_test_acc"].std(ddof=0)
                    ),
                    f"rounds to {100 * f.target_acc:.0f}%": f"{reached.mean():.1f} ± {reached.std(ddof=0):.1f}"
                    if len(reached)
                    else "-",
                    "seeds reaching it": f"{len(reached)}/{len(group)}",
                    "fewer rounds than random": f"{saved.mean():.1f}%" if len(saved) else "-",
                }
            )
            bars.append((cell_name(cell) or cfg.name, start, reached.mean() if len(reached) else float("nan")))
    text = (
        f"\n## Federated follow-up: {f.strategy}, {f.rounds} rounds, target {100 * f.target_acc:.0f}% test accuracy\n\n"
        f"One Flower simulation per seed {cfg.seeds} and partition; rounds are means over the seeds that reached the "
        "target, fewer-rounds percentages are paired per seed against the random start.\n\n"
        + report.markdown(rows)
        + "\n"
    )
    failed = rounds[(rounds["error"] != "") | (rounds["lost"] != "")].drop_duplicates([*axes, "seed"])
    if len(failed):
        listed = failed[[*axes, "seed", "error", "lost"]].to_dict("records")
        text += "\nFailed simulations (or ones that lost client updates):\n\n" + report.markdown(listed) + "\n"
    return text, _rounds_bars(pd.DataFrame(bars, columns=["cell", "start", "rounds"]), f.target_acc)


def _rounds_bars(bars: pd.DataFrame, target: float) -> Figure:
    """Rounds to the target accuracy per partition, one bar per start point (missing: never reached)."""
    cells, starts = list(dict.fromkeys(bars["cell"])), list(dict.fromkeys(bars["start"]))
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(cells) * max(1, len(starts)) / 2, 3.6), layout="constrained")
    width = 0.8 / len(starts)
    for i, start in enumerate(starts):
        values = bars[bars["start"] == start].set_index("cell").reindex(cells)["rounds"]
        ax.bar([x - 0.4 + (i + 0.5) * width for x in range(len(cells))], values, width, label=start)
    ax.set_xticks(range(len(cells)), cells, rotation=20, ha="right")
    ax.set_ylabel(f"rounds to {100 * target:.0f}% (mean over seeds)")
    ax.set_title("Federated rounds to target by start point (no bar: never reached)", fontsize=9)
    ax.legend(fontsize=7)
    return fig
