"""A sweep's figures: gain bars (per cell when the study has axes), a heatmap per two-knob grid, and the
paired differences with their intervals."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from raykd.cells import by_cell, cell_name  # noqa: E402
from raykd.units import ACCURACY, Units  # noqa: E402


def gain_bars(best: pd.DataFrame, units: Units = ACCURACY) -> Figure:
    """Summary test gain per method row with seed spread as error bars; at least as wide as its title."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 1.1 * len(best)), 3.2), layout="constrained")
    ax.bar(
        best["label"],
        units.scale * best["gain"],
        yerr=units.scale * best["gain_std"],
        capsize=4,
        color=["tab:green" if g > 0 else "tab:red" for g in best["gain"]],
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(best)), best["label"], rotation=30, ha="right")  # many rows' names stay legible
    ax.set_ylabel(units.gain_long)
    ax.set_title("Student gain over its starting point (mean ± std over seeds)", fontsize=10)
    return fig


def heatmaps(
    settings: pd.DataFrame, label: str, rows: str, cols: str, title: str = "", units: Units = ACCURACY
) -> Figure:
    """Validation and test gain over a two-knob grid of one method row, side by side."""
    part = settings[settings["label"] == label]
    title = title or label
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    panels = ((axes[0], units.val_metric, units.val_name, units.val_scale), (axes[1], "gain", units.gain, units.scale))
    for ax, metric, name, scale in panels:
        grid = part.pivot_table(index=rows, columns=cols, values=metric) * scale
        image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        ax.set_title(f"{title}: {name}", fontsize=9)
        for (i, j), value in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{value:.{units.digits}f}", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax)
    return fig


def cell_bars(best: pd.DataFrame, order: dict[str, list[str]], units: Units = ACCURACY) -> Figure:
    """Summary test gain per method row, grouped by the first axis' variants; one panel per later-axes combination."""
    first, *rest = order
    panels = list(by_cell(best, rest))
    labels = list(dict.fromkeys(best["label"]))
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(2.5 + 0.3 * len(labels) * len(order[first]), 0.5 + 2.8 * len(panels)),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    width = 0.8 / len(labels)
    for ax, (cell, part) in zip(axes[:, 0], panels, strict=True):
        for i, label in enumerate(labels):
            rows = part[part["label"] == label].set_index(first).reindex(order[first])
            offsets = [x - 0.4 + (i + 0.5) * width for x in range(len(order[first]))]
            gain, spread = units.scale * rows["gain"], units.scale * rows["gain_std"]
            ax.bar(offsets, gain, width, yerr=spread, capsize=2, label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel(f"test gain ({units.gain})")
        ax.set_title(cell_name(cell) or "all cells", fontsize=9)
    axes[-1, 0].set_xticks(range(len(order[first])), order[first])
    axes[-1, 0].set_xlabel(first)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Student {units.gain_long} per cell (mean ± std over seeds)", fontsize=10)
    return fig


def figures(
    settings: pd.DataFrame,
    best: pd.DataFrame,
    knobs_of: dict[str, list[str]],
    order: dict[str, list[str]],
    units: Units = ACCURACY,
) -> dict[str, Figure]:
    """Gain bars (per cell with axes), plus a heatmap per cell for every method row searched over two knobs."""
    out = {"gain_by_cell.png": cell_bars(best, order, units)} if order else {"gain_bars.png": gain_bars(best, units)}
    for cell, part in by_cell(settings, list(order)):
        suffix = "".join(f"_{axis}-{variant}" for axis, variant in cell.items())
        for label, knobs in knobs_of.items():
            rows = part[part["label"] == label]
            varied = [k for k in knobs if rows[k].nunique() > 1]
            if len(varied) == 2:
                title = f"{label} ({cell_name(cell)})" if cell else label
                out[f"heatmap_{label}{suffix}.png"] = heatmaps(part, label, *varied, title=title, units=units)
    return out


def paired_figure(paired: pd.DataFrame, axes: Sequence[str], units: Units = ACCURACY) -> Figure:
    """Each comparison's mean paired difference with its 95% interval; left of zero the tuned row loses."""
    names = [", ".join([*(str(r[a]) for a in axes), f"{r['tuned']} - {r['untuned']}"]) for _, r in paired.iterrows()]
    y = np.arange(len(paired))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.32 * len(paired)), layout="constrained")
    mean, low, high = (units.scale * paired[c].to_numpy() for c in ("mean", "low", "high"))
    ax.errorbar(mean, y, xerr=[mean - low, high - mean], fmt="o", capsize=3, color="tab:blue")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlabel(f"tuned minus untuned test gain, same seeds ({units.gain}, 95% t-interval)")
    ax.set_title("Paired differences per cell", fontsize=10)
    return fig
