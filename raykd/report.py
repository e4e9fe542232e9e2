"""Results of a sweep as tables (per setting, and one summary row per method) and figures.

Every number is a mean and standard deviation over seeds. A method row with a grid is summarised
by its best setting on the validation metric (``tune.select_on``); test accuracy never chooses.
Wall time is Tune's ``time_total_s`` per trial (preparation and every epoch), averaged over seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from raykd.experiment import TIMING_METRICS  # noqa: E402

if TYPE_CHECKING:
    from raykd.config import ExperimentConfig

METRICS = ["val_acc", "local_val_acc", "test_acc", "test_acc_before", "gain", "wall_s"]
#: Table columns read from a differently named trial metric.
SOURCES = {"wall_s": "time_total_s"}


def trial_rows(results: list[tuple[dict[str, Any], dict[str, Any] | None, BaseException | None]]) -> pd.DataFrame:
    """One row per trial from (Tune config, last metrics, error): its setting, seed, metrics and status."""
    rows = []
    for config, metrics, error in results:
        rows.append(
            {
                **config["arm"],
                "seed": config["seed"],
                **{m: (metrics or {}).get(SOURCES.get(m, m)) for m in (*METRICS, *TIMING_METRICS)},
                "status": "ok" if error is None else "failed",
                "error": "" if error is None else str(error).strip().splitlines()[-1][:300],
            }
        )
    return pd.DataFrame(rows)


def per_setting(trials: pd.DataFrame, knobs: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of each metric the trials carry, per (method row, setting); failed trials left out."""
    done = trials[trials["status"] == "ok"]
    keys = ["label", *knobs]
    grouped = done.groupby(keys, dropna=False, sort=False)[[m for m in METRICS if m in done]]
    table = grouped.mean().join(grouped.std(ddof=0).fillna(0.0), rsuffix="_std")
    table["seeds"] = grouped.size()
    return table.reset_index()


def summary(settings: pd.DataFrame, knobs: list[str], select_on: str) -> pd.DataFrame:
    """One row per method row: its best setting by mean ``select_on`` (validation), with how many it tried."""
    rows = []
    for label, group in settings.groupby("label", sort=False):
        best = group.loc[group[select_on].idxmax()]
        rows.append({**best.to_dict(), "settings_tried": len(group), "tuned": len(group) > 1, "label": label})
    return pd.DataFrame(rows)


def _pct(mean: float, std: float, signed: bool = False) -> str:
    return f"{100 * mean:+.1f} ± {100 * std:.1f}" if signed else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _setting(row: pd.Series, knobs: list[str]) -> str:
    return ", ".join(f"{k}={row[k]:g}" for k in knobs if pd.notna(row.get(k))) or "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    """A list of same-keyed dicts as a GitHub Markdown table."""
    if not rows:
        return "(no rows)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def settings_markdown(settings: pd.DataFrame, knobs: list[str], select_on: str) -> str:
    best = summary(settings, knobs, select_on).set_index("label")
    rows = []
    for _, r in settings.iterrows():
        chosen = best.loc[r["label"], "tuned"] and all(
            (pd.isna(r[k]) and pd.isna(best.loc[r["label"], k])) or r[k] == best.loc[r["label"], k] for k in knobs
        )
        rows.append(
            {
                "method": r["label"] + (" *" if chosen else ""),
                "setting": _setting(r, knobs),
                "val acc %": _pct(r["val_acc"], r["val_acc_std"]),
                "local val acc %": _pct(r["local_val_acc"], r["local_val_acc_std"]),
                "test acc %": _pct(r["test_acc"], r["test_acc_std"]),
                "test gain (pts)": _pct(r["gain"], r["gain_std"], signed=True),
                "seeds": int(r["seeds"]),
            }
        )
    return markdown(rows)


def summary_markdown(best: pd.DataFrame, knobs: list[str], select_on: str) -> str:
    rows = [
        {
            "method": r["label"],
            "setting": _setting(r, knobs) + (f" (best of {r['settings_tried']} on {select_on})" if r["tuned"] else ""),
            "start acc %": _pct(r["test_acc_before"], r["test_acc_before_std"]),
            "val acc %": _pct(r["val_acc"], r["val_acc_std"]),
            "test acc %": _pct(r["test_acc"], r["test_acc_std"]),
            "test gain (pts)": _pct(r["gain"], r["gain_std"], signed=True),
            "wall s/trial": f"{r['wall_s']:.1f}" if pd.notna(r.get("wall_s")) else "-",
        }
        for _, r in best.iterrows()
    ]
    return markdown(rows)


def gain_bars(best: pd.DataFrame) -> Figure:
    """Summary test gain per method row with seed spread as error bars."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(best), 3.2), layout="constrained")
    ax.bar(
        best["label"],
        100 * best["gain"],
        yerr=100 * best["gain_std"],
        capsize=4,
        color=["tab:green" if g > 0 else "tab:red" for g in best["gain"]],
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(best)), best["label"], rotation=30, ha="right")  # many rows' names stay legible
    ax.set_ylabel("test accuracy gain (points)")
    ax.set_title("Student gain over its starting point (mean ± std over seeds)")
    return fig


def heatmaps(settings: pd.DataFrame, label: str, rows: str, cols: str) -> Figure:
    """Validation and test gain over a two-knob grid of one method row, side by side."""
    part = settings[settings["label"] == label]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, metric, title in ((axes[0], "val_acc", "validation acc %"), (axes[1], "gain", "test gain (pts)")):
        grid = part.pivot_table(index=rows, columns=cols, values=metric) * 100
        image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        ax.set_title(f"{label}: {title}")
        for (i, j), value in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax)
    return fig


def figures(settings: pd.DataFrame, best: pd.DataFrame, knobs_of: dict[str, list[str]]) -> dict[str, Figure]:
    """Gain bars, plus a heatmap for every method row searched over exactly two knobs."""
    out = {"gain_bars.png": gain_bars(best)}
    for label, knobs in knobs_of.items():
        part = settings[settings["label"] == label]
        varied = [k for k in knobs if part[k].nunique() > 1]
        if len(varied) == 2:
            out[f"heatmap_{label}.png"] = heatmaps(settings, label, *varied)
    return out


def study(cfg: ExperimentConfig, run_name: str, trials: pd.DataFrame) -> tuple[str, dict[str, Figure], pd.DataFrame]:
    """The sweep's Markdown report, its figures, and the summary rows (best setting per method row)."""
    knobs_of = {m.display(): m.knobs() for m in cfg.methods}
    knobs = list(dict.fromkeys(k for ks in knobs_of.values() for k in ks))
    settings = per_setting(trials, knobs)
    best = summary(settings, knobs, cfg.tune.select_on)
    text = (
        f"# {run_name}\n\nStudent node {cfg.transfer.student}, teachers {cfg.transfer.teachers}, "
        f"{cfg.data.dataset}, {cfg.partition.scheme} partition over {cfg.partition.num_nodes} nodes, "
        f"transfer set '{cfg.transfer.set}', teacher mode '{cfg.teacher.mode}', seeds {cfg.seeds}. "
        "Accuracies in %, mean ± std over seeds.\n\n"
        f"## Summary (tuned rows: best setting on {cfg.tune.select_on}, never on test)\n\n"
        + summary_markdown(best, knobs, cfg.tune.select_on)
        + "\n\n## Every setting (* = chosen on validation)\n\n"
        + settings_markdown(settings, knobs, cfg.tune.select_on)
        + "\n"
    )
    failed = trials[trials["status"] == "failed"]
    if len(failed):
        rows = [
            {"method": r["label"], "setting": _setting(r, knobs), "seed": r["seed"], "error": r["error"]}
            for _, r in failed.iterrows()
        ]
        text += "\n## Failed trials\n\n" + markdown(rows) + "\n"
    return text, figures(settings, best, knobs_of), best


def server_line(stats: dict[str, Any]) -> str:
    return (
        f"\nTeacher server ({stats['device']}): {stats['requests']} requests in {stats['batches']} batches "
        f"(mean {stats['mean_batch_rows']:.0f} rows, max {stats['max_batch_rows']}), "
        f"compute {stats['compute_s']:.1f} s, queueing {stats['wait_s']:.1f} s\n"
    )
