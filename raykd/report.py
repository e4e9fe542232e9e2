"""Results of a sweep as tables (per setting, and one summary row per method) and figures.

Every number is a mean and standard deviation over seeds. A method row with a grid is summarised
by its best setting on the validation metric (``tune.select_on``); test accuracy never chooses.
Wall time is Tune's ``time_total_s`` per trial (preparation and every epoch), averaged over seeds.
A study with ``axes`` is summarised per cell (one combination of axis variants), side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from raykd.experiment import TIMING_METRICS  # noqa: E402
from raykd.files import last_line  # noqa: E402

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
                **config.get("cell", {}),
                **config["arm"],
                "seed": config["seed"],
                **{m: (metrics or {}).get(SOURCES.get(m, m)) for m in (*METRICS, *TIMING_METRICS)},
                "status": "ok" if error is None else "failed",
                "error": "" if error is None else last_line(str(error)),
            }
        )
    return pd.DataFrame(rows)


def failures_only(run_name: str, trials: pd.DataFrame) -> str:
    """The report of a sweep in which no trial succeeded: what each one failed with."""
    failures = markdown(trials[["label", "seed", "error"]].to_dict("records"))
    return f"# {run_name}\n\nNo trial succeeded.\n\n## Failed trials\n\n{failures}\n"


def per_setting(trials: pd.DataFrame, knobs: list[str], axes: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per (cell, method row, setting); failed trials left out."""
    done = trials[trials["status"] == "ok"]
    keys = [*axes, "label", *knobs]
    grouped = done.groupby(keys, dropna=False, sort=False)[[m for m in METRICS if m in done]]
    table = grouped.mean().join(grouped.std(ddof=0).fillna(0.0), rsuffix="_std")
    table["seeds"] = grouped.size()
    return table.reset_index()


def summary(settings: pd.DataFrame, knobs: list[str], select_on: str, axes: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (cell, method row): its best setting by mean ``select_on`` (validation), and how many it tried."""
    rows = []
    for _, group in settings.groupby([*axes, "label"], sort=False):
        best = group.loc[group[select_on].idxmax()]
        rows.append({**best.to_dict(), "settings_tried": len(group), "tuned": len(group) > 1})
    return pd.DataFrame(rows)


def pct(mean: float, std: float, signed: bool = False) -> str:
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
                "val acc %": pct(r["val_acc"], r["val_acc_std"]),
                "local val acc %": pct(r["local_val_acc"], r["local_val_acc_std"]),
                "test acc %": pct(r["test_acc"], r["test_acc_std"]),
                "test gain (pts)": pct(r["gain"], r["gain_std"], signed=True),
                "seeds": int(r["seeds"]),
            }
        )
    return markdown(rows)


def summary_markdown(best: pd.DataFrame, knobs: list[str], select_on: str) -> str:
    rows = [
        {
            "method": r["label"],
            "setting": _setting(r, knobs) + (f" (best of {r['settings_tried']} on {select_on})" if r["tuned"] else ""),
            "start acc %": pct(r["test_acc_before"], r["test_acc_before_std"]),
            "val acc %": pct(r["val_acc"], r["val_acc_std"]),
            "test acc %": pct(r["test_acc"], r["test_acc_std"]),
            "test gain (pts)": pct(r["gain"], r["gain_std"], signed=True),
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


def heatmaps(settings: pd.DataFrame, label: str, rows: str, cols: str, title: str = "") -> Figure:
    """Validation and test gain over a two-knob grid of one method row, side by side."""
    part = settings[settings["label"] == label]
    title = title or label
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for ax, metric, name in ((axes[0], "val_acc", "validation acc %"), (axes[1], "gain", "test gain (pts)")):
        grid = part.pivot_table(index=rows, columns=cols, values=metric) * 100
        image = ax.imshow(grid.values, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), [f"{c:g}" for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{i:g}" for i in grid.index])
        ax.set_xlabel(cols)
        ax.set_ylabel(rows)
        ax.set_title(f"{title}: {name}", fontsize=9)
        for (i, j), value in pd.DataFrame(grid.values).stack().items():
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color="white", fontsize=8)
        fig.colorbar(image, ax=ax)
    return fig


def cell_bars(best: pd.DataFrame, order: dict[str, list[str]]) -> Figure:
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
            ax.bar(offsets, 100 * rows["gain"], width, yerr=100 * rows["gain_std"], capsize=2, label=label)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("test gain (pts)")
        ax.set_title(cell_name(cell) or "all cells", fontsize=9)
    axes[-1, 0].set_xticks(range(len(order[first])), order[first])
    axes[-1, 0].set_xlabel(first)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("Student test-accuracy gain per cell (mean ± std over seeds)", fontsize=10)
    return fig


def by_cell(frame: pd.DataFrame, axes: list[str]) -> list[tuple[dict[str, str], pd.DataFrame]]:
    """(cell variants, its rows) per combination of ``axes`` present, in order of appearance."""
    if not axes:
        return [({}, frame)]
    return [(dict(zip(axes, key, strict=True)), part) for key, part in frame.groupby(axes, sort=False)]


def cell_name(cell: dict[str, str]) -> str:
    return ", ".join(f"{axis}={variant}" for axis, variant in cell.items())


def figures(
    settings: pd.DataFrame, best: pd.DataFrame, knobs_of: dict[str, list[str]], order: dict[str, list[str]]
) -> dict[str, Figure]:
    """Gain bars (per cell with axes), plus a heatmap per cell for every method row searched over two knobs."""
    out = {"gain_by_cell.png": cell_bars(best, order)} if order else {"gain_bars.png": gain_bars(best)}
    for cell, part in by_cell(settings, list(order)):
        suffix = "".join(f"_{axis}-{variant}" for axis, variant in cell.items())
        for label, knobs in knobs_of.items():
            rows = part[part["label"] == label]
            varied = [k for k in knobs if rows[k].nunique() > 1]
            if len(varied) == 2:
                title = f"{label} ({cell_name(cell)})" if cell else label
                out[f"heatmap_{label}{suffix}.png"] = heatmaps(part, label, *varied, title=title)
    return out


def cell_table(best: pd.DataFrame, order: dict[str, list[str]]) -> str:
    """Summary test gain per method row: rows are the later axes and the method, columns the first axis' variants."""
    first, *rest = order
    rows = []
    for cell, part in by_cell(best, rest):
        for label, group in part.groupby("label", sort=False):
            gains = group.set_index(first)
            rows.append(
                {
                    **cell,
                    "method": label,
                    **{
                        v: pct(gains.loc[v, "gain"], gains.loc[v, "gain_std"], signed=True) if v in gains.index else "-"
                        for v in order[first]
                    },
                }
            )
    return markdown(rows)


def tuning_table(best: pd.DataFrame, axes: list[str], knobs: list[str], baselines: set[str]) -> str:
    """Per cell: the tuned rows' gain against the best untuned distillation row's (the paper's tuning benefit).

    The best untuned row is the one with the highest mean test gain: the strongest competitor, so the
    reported benefit of tuning is a lower bound. It is a comparison, not a selection: the tuned row's
    own setting was chosen on validation. Rows in ``baselines`` (no distillation) are shown, not compared.
    """
    rows = []
    for cell, part in by_cell(best, axes):
        untuned = part[~part["tuned"] & ~part["label"].isin(baselines)]
        reference = part[part["label"].isin(baselines)]
        for _, tuned in part[part["tuned"]].iterrows():
            if untuned.empty:
                continue
            rival = untuned.loc[untuned["gain"].idxmax()]
            benefit = (
                f"{100 * (tuned['gain'] - rival['gain']) / rival['gain']:+.0f}%" if rival["gain"] > 0 else "n/a (≤ 0)"
            )
            rows.append(
                {
                    **cell,
                    "tuned row": f"{tuned['label']} ({_setting(tuned, knobs)})",
                    "tuned gain": pct(tuned["gain"], tuned["gain_std"], signed=True),
                    "best untuned": rival["label"],
                    "its gain": pct(rival["gain"], rival["gain_std"], signed=True),
                    "no-KD gain": ", ".join(pct(r["gain"], r["gain_std"], signed=True) for _, r in reference.iterrows())
                    or "-",
                    "tuned vs untuned (pts)": f"{100 * (tuned['gain'] - rival['gain']):+.1f}",
                    "tuning benefit": benefit,
                }
            )
    return markdown(rows)


def study(cfg: ExperimentConfig, run_name: str, trials: pd.DataFrame) -> tuple[str, dict[str, Figure], pd.DataFrame]:
    """The sweep's Markdown report, its figures, and the summary rows (best setting per cell and method row)."""
    knobs_of = {m.display(): m.knobs() for m in cfg.methods}
    knobs = list(dict.fromkeys(k for ks in knobs_of.values() for k in ks))
    order = {axis: list(variants) for axis, variants in cfg.axes.items()}
    settings = per_setting(trials, knobs, list(order))
    best = summary(settings, knobs, cfg.tune.select_on, list(order))
    text = (cells_report if order else single_report)(cfg, run_name, settings, best, knobs)
    failed = trials[trials["status"] == "failed"]
    if len(failed):
        rows = [
            {
                **{a: r[a] for a in order},
                "method": r["label"],
                "setting": _setting(r, knobs),
                "seed": r["seed"],
                "error": r["error"],
            }
            for _, r in failed.iterrows()
        ]
        text += "\n## Failed trials\n\n" + markdown(rows) + "\n"
    return text, figures(settings, best, knobs_of, order), best


def cells_report(
    cfg: ExperimentConfig, run_name: str, settings: pd.DataFrame, best: pd.DataFrame, knobs: list[str]
) -> str:
    """A study over axes: gain per cell side by side, the tuning benefit per cell, then each cell's summary."""
    order = {axis: list(variants) for axis, variants in cfg.axes.items()}
    variants = "; ".join(
        f"{axis}: "
        + ", ".join(f"{v} ({', '.join(f'{k}={x}' for k, x in o.items()) or 'base config'})" for v, o in vs.items())
        for axis, vs in cfg.axes.items()
    )
    baselines = {m.display() for m in cfg.methods if m.name == "ce"}
    text = (
        f"# {run_name}\n\nStudent node {cfg.transfer.student}, teachers {cfg.transfer.teachers}, {cfg.data.dataset}, "
        f"{cfg.partition.num_nodes} nodes, teacher mode '{cfg.teacher.mode}', seeds {cfg.seeds}. Cells: {variants}. "
        "Accuracies in %, mean ± std over seeds; tuned rows show their best setting on "
        f"{cfg.tune.select_on}, never chosen on test.\n\n"
        "## Test gain (points) per cell\n\n" + cell_table(best, order) + "\n\n"
        "## Tuning benefit per cell\n\nTuned gain against the untuned distillation row with the highest test gain "
        "(the strongest rival, so the benefit is a lower bound); 'n/a' when that rival does not gain at all.\n\n"
        + tuning_table(best, list(order), knobs, baselines)
        + "\n"
    )
    for cell, part in by_cell(best, list(order)):
        text += f"\n## {cell_name(cell)}\n\n" + summary_markdown(part, knobs, cfg.tune.select_on) + "\n"
    return text


def single_report(
    cfg: ExperimentConfig, run_name: str, settings: pd.DataFrame, best: pd.DataFrame, knobs: list[str]
) -> str:
    """A study of one cell: the summary, then every setting tried."""
    return (
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


def server_line(stats: dict[str, Any]) -> str:
    return (
        f"\nTeacher server ({stats['device']}): {stats['requests']} requests in {stats['batches']} batches "
        f"(mean {stats['mean_batch_rows']:.0f} rows, max {stats['max_batch_rows']}), "
        f"compute {stats['compute_s']:.1f} s, queueing {stats['wait_s']:.1f} s\n"
    )
