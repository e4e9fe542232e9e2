"""What a sweep's search cost, per searched method row and cell, and how its best validation score grew with it.

The cost is counted in **trial-epochs** (transfer epochs trained, summed over trials: a trial ASHA stopped at
epoch 2 costs 2) and in trial seconds (Tune's ``time_total_s`` summed), against the full grid's trial-epochs
when the row's knobs are all lists (a range has no grid). The progress plot puts the best mean validation
score of the settings finished so far against the trial-epochs spent, in the order Tune started the trials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from raykd.cells import by_cell, cell_name  # noqa: E402
from raykd.units import Units  # noqa: E402

if TYPE_CHECKING:
    from raykd.config import ExperimentConfig


def searched_rows(cfg: ExperimentConfig) -> list[str]:
    """Labels of the rows with more than one setting: the ones a search chooses for."""
    return [m.display() for m in cfg.methods if m.searched()]


def how(cfg: ExperimentConfig) -> str:
    """The search in words, e.g. ``optuna x 5 + asha``."""
    search = "grid" if cfg.tune.search == "grid" else f"{cfg.tune.search} x {cfg.tune.num_samples}"
    return search + (" + asha" if cfg.tune.scheduler == "asha" else "")


def grid_epochs(cfg: ExperimentConfig, label: str) -> int | None:
    """The full grid's trial-epochs for a row whose knobs are all lists; None for a row with ranges."""
    row = cfg.method(label)
    return None if row.ranges() else len(row.grid()) * len(cfg.seeds) * cfg.trial_epochs


def cost_rows(cfg: ExperimentConfig, trials: pd.DataFrame, best: pd.DataFrame, knobs: list[str]) -> list[dict]:
    """One row per searched method row and cell: trials started and stopped, trial-epochs and seconds, the
    grid's trial-epochs, and the setting chosen on validation."""
    axes = list(cfg.axes)
    rows = []
    for cell, part in by_cell(trials, axes):
        picked = best
        for axis, variant in cell.items():
            picked = picked[picked[axis] == variant]
        for label in searched_rows(cfg):
            mine, chosen = part[part["label"] == label], picked[picked["label"] == label]
            spent, grid = int(mine["epochs"].fillna(0).sum()), grid_epochs(cfg, label)
            shown = [f"{k}={r[k]:.3g}" for _, r in chosen.head(1).iterrows() for k in knobs if pd.notna(r.get(k))]
            rows.append(
                {
                    **cell,
                    "method": label,
                    "search": how(cfg),
                    "trials": len(mine),
                    "stopped": int((mine["status"] == "stopped").sum()),
                    "trial-epochs": spent,
                    "trial seconds": f"{mine['wall_s'].fillna(0).sum():.0f}",
                    "grid trial-epochs": grid if grid is not None else "- (ranges)",
                    "share of grid": f"{100 * spent / grid:.0f}%" if grid else "-",
                    "chosen setting": ", ".join(shown) or "-",
                }
            )
    return rows


def progress(part: pd.DataFrame, metric: str, lower_is_better: bool) -> tuple[list[int], list[float]]:
    """(trial-epochs spent, best mean validation score so far) each time a setting's last seed ends, in the order
    Tune started the trials; settings with a stopped or failed seed never count as best."""
    ordered = part.sort_values("order")
    keys = [c for c in ordered.columns if c.startswith("knob:")]
    spent, seen, xs, ys = 0, {}, [], []
    seeds = ordered["seed"].nunique()
    best = None
    for _, trial in ordered.iterrows():
        spent += int(trial["epochs"]) if pd.notna(trial["epochs"]) else 0
        key = tuple(trial[k] for k in keys)
        seen.setdefault(key, []).append(trial)
        group = seen[key]
        if len(group) == seeds and all(t["status"] == "ok" for t in group):
            score = sum(t[metric] for t in group) / seeds
            best = score if best is None or (score < best if lower_is_better else score > best) else best
        if best is not None:
            xs.append(spent)
            ys.append(best)
    return xs, ys


def progress_figure(
    cfg: ExperimentConfig, trials: pd.DataFrame, knobs: list[str], units: Units, lower_is_better: bool
) -> Figure:
    """Best mean validation score so far against trial-epochs spent: one panel per searched row, a line per cell."""
    labels = searched_rows(cfg)
    fig, axes = plt.subplots(1, len(labels), figsize=(4.5 * len(labels), 3.4), squeeze=False, layout="constrained")
    metric = cfg.tune.select_on
    marked = trials.rename(columns={k: f"knob:{k}" for k in knobs})
    for ax, label in zip(axes[0], labels, strict=True):
        for cell, part in by_cell(marked[marked["label"] == label], list(cfg.axes)):
            xs, ys = progress(part, metric, lower_is_better)
            ax.step(xs, [units.val_scale * y for y in ys], where="post", label=cell_name(cell) or label)
        grid = grid_epochs(cfg, label)
        if grid:
            ax.axvline(grid, color="grey", linestyle=":", linewidth=1, label="full grid")
        ax.set_xlabel("trial-epochs spent")
        ax.set_ylabel(f"best mean {metric}" + (" (%)" if units.val_scale == 100 else ""))
        ax.set_title(f"{label}: {how(cfg)}", fontsize=9)
        ax.legend(fontsize=6)
    return fig


def search_section(cfg: ExperimentConfig, table: str) -> str:
    """The report's section on what the search cost and what it chose, around ``cost_rows`` as a table."""
    return (
        "\n## Search cost\n\n"
        f"Each searched row's settings ({how(cfg)}), run at every seed; trial-epochs are transfer epochs trained, "
        "summed over trials (a trial stopped early counts the epochs it trained), against the full grid's. A setting "
        "with a stopped trial is never chosen. The chosen setting is the best mean validation score "
        f"({cfg.tune.select_on}) over the seeds.\n\n" + table + "\n"
    )


def cost_metrics(rows: list[dict], axes: list[str]) -> dict[str, float]:
    """Each searched row's trials, stopped trials and trial-epochs as the sweep's MLflow metrics."""
    metrics = {}
    for r in rows:
        name = ".".join(["search", *(str(r[a]) for a in axes), str(r["method"])])
        metrics.update({f"{name}.{k.replace('-', '_')}": float(r[k]) for k in ("trials", "stopped", "trial-epochs")})
    return metrics
