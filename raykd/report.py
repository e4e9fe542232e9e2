"""Results of a sweep as tables (per setting, and one summary row per method) and figures.

Every number is a mean and standard deviation over seeds. A method row with a grid is summarised
by its best setting on the validation metric (``tune.select_on``); test accuracy never chooses.
Wall time is Tune's ``time_total_s`` per trial (preparation and every epoch), averaged over seeds.
A study with ``axes`` is summarised per cell (one combination of axis variants), side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

from raykd.cells import by_cell, cell_name
from raykd.config import cell_key
from raykd.experiment import TIMING_METRICS
from raykd.files import last_line
from raykd.paired import comparisons, paired_rows, tuning_benefit
from raykd.plots import figures, paired_figure
from raykd.search_cost import cost_rows, progress_figure, search_section, searched_rows
from raykd.units import ACCURACY, NATS, Units, units_of

if TYPE_CHECKING:
    from raykd.config import ExperimentConfig

METRICS = ["val_acc", "local_val_acc", "test_acc", "test_acc_before", "gain", "wall_s"]
#: A language model's perplexities, read when a trial reports them (``raykd.experiment.LM_METRICS``).
LM_METRICS = ["val_ppl", "test_ppl", "test_ppl_before"]
#: Table columns read from a differently named trial metric.
SOURCES = {"wall_s": "time_total_s"}


def trial_rows(
    results: list[tuple[dict[str, Any], dict[str, Any] | None, BaseException | None]], budgets: dict[str, int]
) -> pd.DataFrame:
    """One row per trial from (Tune config, last metrics, error): its setting, seed, metrics, the epochs it trained
    (``order``: when Tune started it) and its status: ok, failed, or stopped (by a scheduler, before its cell's
    ``budgets`` of transfer epochs). A setting a sampler drew twice is one trial (the second replays the first)."""
    rows, seen = [], set()
    lm = any("val_ppl" in (metrics or {}) for _, metrics, _ in results)
    for order, (config, metrics, error) in enumerate(results):
        key = json.dumps([config.get("cell"), config["arm"], config["seed"]], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        epochs = (metrics or {}).get("epoch")
        stopped = error is None and epochs is not None and epochs < budgets[cell_key(config.get("cell", {}))]
        rows.append(
            {
                **config.get("cell", {}),
                **config["arm"],
                "seed": config["seed"],
                **{
                    m: (metrics or {}).get(SOURCES.get(m, m))
                    for m in (*METRICS, *(LM_METRICS if lm else []), *TIMING_METRICS)
                },
                "epochs": epochs,
                "order": order,
                "status": "failed" if error is not None else ("stopped" if stopped else "ok"),
                "error": "" if error is None else last_line(str(error)),
            }
        )
    return pd.DataFrame(rows)


def failures_only(run_name: str, trials: pd.DataFrame) -> str:
    """The report of a sweep in which no trial succeeded: what each one failed with."""
    failures = markdown(trials[["label", "seed", "error"]].to_dict("records"))
    return f"# {run_name}\n\nNo trial succeeded.\n\n## Failed trials\n\n{failures}\n"


def per_setting(trials: pd.DataFrame, knobs: list[str], axes: Sequence[str] = ()) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per (cell, method row, setting); failed trials left out, and settings
    a scheduler stopped early (their scores are from fewer epochs, so they never compete with finished ones)."""
    keys = [*axes, "label", *knobs]
    stopped = trials.groupby(keys, dropna=False, sort=False)["status"].transform(lambda s: (s == "stopped").any())
    done = trials[(trials["status"] == "ok") & ~stopped]  # a setting stopped at any seed is never chosen
    grouped = done.groupby(keys, dropna=False, sort=False)[[m for m in (*METRICS, *LM_METRICS) if m in done]]
    table = grouped.mean().join(grouped.std(ddof=0).fillna(0.0), rsuffix="_std")
    table["seeds"] = grouped.size()
    return table.reset_index()


def summary(settings: pd.DataFrame, knobs: list[str], select_on: str, axes: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (cell, method row): its best setting by mean ``select_on`` (validation; the highest accuracy or the
    lowest perplexity), and how many it tried."""
    rows = []
    for _, group in settings.groupby([*axes, "label"], sort=False):
        best = group.loc[group[select_on].idxmin() if select_on in LOWER_IS_BETTER else group[select_on].idxmax()]
        rows.append({**best.to_dict(), "settings_tried": len(group), "tuned": len(group) > 1})
    return pd.DataFrame(rows)


#: Validation metrics where the lowest value is the best.
LOWER_IS_BETTER = ("val_ppl",)


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


def quality(r: pd.Series | dict[str, Any], units: Units, local: bool = False) -> dict[str, str]:
    """A row's validation and test columns: accuracies in % (``local``: the student's local validation too), or a
    language model's perplexities and its next-token accuracy; and its test gain in the study's units."""
    if units is NATS:
        columns = {
            "val ppl": f"{r['val_ppl']:.2f} ± {r['val_ppl_std']:.2f}",
            "test ppl": f"{r['test_ppl']:.2f} ± {r['test_ppl_std']:.2f}",
            "next-token acc %": pct(r["test_acc"], r["test_acc_std"]),
        }
    else:
        columns = {
            "val acc %": pct(r["val_acc"], r["val_acc_std"]),
            **({"local val acc %": pct(r["local_val_acc"], r["local_val_acc_std"])} if local else {}),
            "test acc %": pct(r["test_acc"], r["test_acc_std"]),
        }
    return {**columns, f"test gain ({units.gain})": units.spread(r["gain"], r["gain_std"])}


def settings_markdown(settings: pd.DataFrame, knobs: list[str], select_on: str, units: Units = ACCURACY) -> str:
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
                **quality(r, units, local=True),
                "seeds": int(r["seeds"]),
            }
        )
    return markdown(rows)


def start_column(r: pd.Series, units: Units) -> dict[str, str]:
    """The student's score before transfer: its test perplexity, or its test accuracy in %."""
    if units is NATS:
        return {"start ppl": f"{r['test_ppl_before']:.2f}"}
    return {"start acc %": pct(r["test_acc_before"], r["test_acc_before_std"])}


def summary_markdown(best: pd.DataFrame, knobs: list[str], select_on: str, units: Units = ACCURACY) -> str:
    rows = [
        {
            "method": r["label"],
            "setting": _setting(r, knobs) + (f" (best of {r['settings_tried']} on {select_on})" if r["tuned"] else ""),
            **start_column(r, units),
            **quality(r, units),
            "wall s/trial": f"{r['wall_s']:.1f}" if pd.notna(r.get("wall_s")) else "-",
        }
        for _, r in best.iterrows()
    ]
    return markdown(rows)


def cell_table(best: pd.DataFrame, order: dict[str, list[str]], units: Units = ACCURACY) -> str:
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
                        v: units.spread(gains.loc[v, "gain"], gains.loc[v, "gain_std"]) if v in gains.index else "-"
                        for v in order[first]
                    },
                }
            )
    return markdown(rows)


def tuning_table(
    trials: pd.DataFrame,
    best: pd.DataFrame,
    axes: list[str],
    knobs: list[str],
    baselines: set[str],
    units: Units = ACCURACY,
) -> str:
    """Per cell: the tuned rows' gain against the best untuned distillation row's (the paper's tuning benefit).

    The best untuned row is the one with the highest mean test gain: the strongest competitor, so the
    reported benefit of tuning is a lower bound. It is a comparison, not a selection: the tuned row's
    own setting was chosen on validation. Rows in ``baselines`` (no distillation) are shown, not compared.
    The benefit carries Fieller's 95% interval over the paired seeds (raykd.paired).
    """
    keys = [*axes, "label", *knobs]
    rows = []
    for cell, part in by_cell(best, axes):
        untuned = part[~part["tuned"] & ~part["label"].isin(baselines)]
        reference = part[part["label"].isin(baselines)]
        for _, tuned in part[part["tuned"]].iterrows():
            if untuned.empty:
                continue
            rival = untuned.loc[untuned["gain"].idxmax()]
            rows.append(
                {
                    **cell,
                    "tuned row": f"{tuned['label']} ({_setting(tuned, knobs)})",
                    "tuned gain": units.spread(tuned["gain"], tuned["gain_std"]),
                    "best untuned": rival["label"],
                    "its gain": units.spread(rival["gain"], rival["gain_std"]),
                    "no-KD gain": ", ".join(units.spread(r["gain"], r["gain_std"]) for _, r in reference.iterrows())
                    or "-",
                    f"tuned vs untuned ({units.gain})": units.signed(tuned["gain"] - rival["gain"]),
                    "tuning benefit [95% CI]": tuning_benefit(trials, tuned, rival, keys),
                }
            )
    return markdown(rows)


def in_config_order(trials: pd.DataFrame, cfg: ExperimentConfig) -> pd.DataFrame:
    """Trials sorted by the config's cells, method rows, settings and seeds, not by when each one finished.

    So an interrupted and resumed sweep, or one whose trial was retried, writes the same tables as one that ran
    straight through.
    """
    arms = {}
    for m in cfg.methods:
        for setting in [] if m.ranges() else m.grid():  # sampled settings follow, in the order Tune started them
            arms[(m.display(), *(setting[k] for k in m.knobs()))] = len(arms)
    knobs_of = {m.display(): m.knobs() for m in cfg.methods}
    arm = pd.Series(
        [arms.get((r["label"], *(r[k] for k in knobs_of[r["label"]])), len(arms)) for _, r in trials.iterrows()],
        index=trials.index,
        dtype=int,
    )
    order = {
        **{f"_{axis}": trials[axis].map({v: i for i, v in enumerate(variants)}) for axis, variants in cfg.axes.items()},
        "_arm": arm,
        "_order": trials["order"].where(arm == len(arms), 0),  # sampled settings: in the order Tune started them
        "_seed": trials["seed"].map({seed: i for i, seed in enumerate(cfg.seeds)}),
    }
    ordered = trials.assign(**order).sort_values(list(order), kind="stable")
    return ordered.drop(columns=list(order)).reset_index(drop=True)


@dataclass(frozen=True)
class StudyReport:
    """A sweep's Markdown report, its figures, its summary rows, its paired comparisons and what its search cost."""

    text: str
    figures: dict[str, Figure]
    best: pd.DataFrame
    paired: pd.DataFrame
    search_cost: list[dict[str, Any]]  # per searched row and cell (``raykd.search_cost.cost_rows``)


def study(cfg: ExperimentConfig, run_name: str, trials: pd.DataFrame) -> StudyReport:
    """The sweep's report: text, figures, the summary rows (best setting per cell and method row), paired stats."""
    knobs_of = {m.display(): m.knobs() for m in cfg.methods}
    knobs = list(dict.fromkeys(k for ks in knobs_of.values() for k in ks))
    order = {axis: list(variants) for axis, variants in cfg.axes.items()}
    trials = in_config_order(trials, cfg)
    units = units_of(cfg.data.task)
    settings = per_setting(trials, knobs, list(order))
    best = summary(settings, knobs, cfg.tune.select_on, list(order))
    keys = [*order, "label"]
    tried = {key: len(part[knobs].drop_duplicates()) for key, part in trials.groupby(keys, sort=False)}
    best["settings_tried"] = [tried[tuple(r[keys])] for _, r in best.iterrows()]  # stopped settings too
    best["tuned"] = best["label"].isin(searched_rows(cfg))
    if order:
        text = cells_report(cfg, run_name, trials, settings, best, knobs)
    else:
        text = single_report(cfg, run_name, settings, best, knobs)
    pairs = comparisons(trials, best, list(order), knobs)
    charts = figures(settings, best, knobs_of, order, units)
    if len(pairs):
        text += PAIRED_HEAD + markdown(paired_rows(pairs, list(order), units)) + "\n"
        charts["paired_differences.png"] = paired_figure(pairs, list(order), units)
    cost = cost_rows(cfg, trials, best, knobs)
    if cost:
        text += search_section(cfg, markdown(cost))
        lower = cfg.tune.select_on in LOWER_IS_BETTER
        charts["search_progress.png"] = progress_figure(cfg, trials, knobs, units, lower)
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
    return StudyReport(text, charts, best, pairs, cost)


PAIRED_HEAD = (
    "\n## Paired differences: tuned minus untuned, seed by seed\n\n"
    "Each seed fixes the split, partition and node models, so rows run at the same seed are compared "
    "directly. Mean of the per-seed differences in test gain, with a 95% Student-t interval over seeds "
    "(n - 1 degrees of freedom; with this few seeds a bootstrap interval would be too narrow). An interval "
    "that covers 0 is no evidence of a difference.\n\n"
)


def cells_report(
    cfg: ExperimentConfig,
    run_name: str,
    trials: pd.DataFrame,
    settings: pd.DataFrame,
    best: pd.DataFrame,
    knobs: list[str],
) -> str:
    """A study over axes: gain per cell side by side, the tuning benefit per cell, then each cell's summary."""
    order = {axis: list(variants) for axis, variants in cfg.axes.items()}
    variants = "; ".join(
        f"{axis}: "
        + ", ".join(f"{v} ({', '.join(f'{k}={x}' for k, x in o.items()) or 'base config'})" for v, o in vs.items())
        for axis, vs in cfg.axes.items()
    )
    baselines = {m.display() for m in cfg.methods if m.name == "ce"}
    units = units_of(cfg.data.task)
    text = (
        f"# {run_name}\n\nStudent node {cfg.transfer.student}, teachers {cfg.transfer.teachers}, {cfg.data.dataset}, "
        f"{cfg.partition.num_nodes} nodes, teacher mode '{cfg.teacher.mode}', seeds {cfg.seeds}. Cells: {variants}. "
        f"{units_line(units)}; tuned rows show their best setting on {cfg.tune.select_on}, never chosen on test.\n\n"
        f"## Test gain ({'points' if units is ACCURACY else units.gain}) per cell\n\n"
        + cell_table(best, order, units)
        + "\n\n"
        "## Tuning benefit per cell\n\nTuned gain against the untuned distillation row with the highest test gain "
        "(the strongest rival, so the benefit is a lower bound), with Fieller's 95% interval over the paired seeds; "
        "'n/a' when the rival's own gain interval covers 0 (the ratio is then unbounded).\n\n"
        + tuning_table(trials, best, list(order), knobs, baselines, units)
        + "\n"
    )
    for cell, part in by_cell(best, list(order)):
        text += f"\n## {cell_name(cell)}\n\n" + summary_markdown(part, knobs, cfg.tune.select_on, units) + "\n"
    return text


def single_report(
    cfg: ExperimentConfig, run_name: str, settings: pd.DataFrame, best: pd.DataFrame, knobs: list[str]
) -> str:
    """A study of one cell: the summary, then every setting tried."""
    units = units_of(cfg.data.task)
    return (
        f"# {run_name}\n\nStudent node {cfg.transfer.student}, teachers {cfg.transfer.teachers}, "
        f"{cfg.data.dataset}, {cfg.partition.scheme} partition over {cfg.partition.num_nodes} nodes, "
        f"transfer set '{cfg.transfer.set}', teacher mode '{cfg.teacher.mode}', seeds {cfg.seeds}. "
        f"{units_line(units)}.\n\n"
        f"## Summary (tuned rows: best setting on {cfg.tune.select_on}, never on test)\n\n"
        + summary_markdown(best, knobs, cfg.tune.select_on, units)
        + "\n\n## Every setting (* = chosen on validation)\n\n"
        + settings_markdown(settings, knobs, cfg.tune.select_on, units)
        + "\n"
    )


def units_line(units: Units) -> str:
    """The report's sentence on what its numbers are."""
    if units is NATS:
        return (
            "Perplexities and next-token accuracy on held-out text; the gain is the drop in test cross-entropy "
            "(nats per token) from the student's start; mean ± std over seeds"
        )
    return "Accuracies in %, mean ± std over seeds"


def server_line(stats: dict[str, Any]) -> str:
    server = f"{stats['replicas']} teacher server replicas" if "replicas" in stats else "Teacher server"
    return (
        f"\n{server} ({stats['device']}): {stats['requests']} requests in {stats['batches']} batches "
        f"(mean {stats['mean_batch_rows']:.0f} rows, max {stats['max_batch_rows']}), "
        f"compute {stats['compute_s']:.1f} s, queueing {stats['wait_s']:.1f} s; on Ray node {stats['node_id']}\n"
    )
