"""``python -m federated.tune``: Ray Tune over federated simulations, one full simulation per trial.

A simulation cannot run inside a trial's process: Flower's actor pool needs resources the trial did
not reserve, and Flower's ``ray.shutdown()`` at the end would break the trial's worker. So each trial
reserves a sliver of CPU and starts ``python -m federated.simulate`` as a child driver process joined
to the same cluster; the child's Flower pool takes the free CPUs and its shutdown only disconnects
the child. Trials run one at a time because each simulation's pool takes every free CPU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import federated  # noqa: F401  (sets Flower's environment for the child simulations)
from raykd.cli import EXIT_ROUNDS_LOST, add_run_arguments, overrides_of, run_command
from raykd.config import ExperimentConfig, load_config
from raykd.errors import ConfigError
from raykd.federated_checks import check_federated
from raykd.files import last_line

if TYPE_CHECKING:
    import pandas as pd

#: The summary numbers each trial reports; a language model's runs add ``final_test_ppl``.
METRICS = ("final_test_acc", "final_test_ppl", "rounds_to_target", "failed_clients")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federated.tune",
        description="Grid-search federated knobs with Ray Tune; every trial is one federated simulation.",
        epilog="example:\n  python -m federated.tune --config tune_configs/federated_kd.yaml \\\n"
        "    --grid methods.0.alpha=[0.25,0.5,0.75] --grid methods.0.temperature=[2,4] \\\n"
        "    --set federated.client_cpus=0.6\n\n"
        "Exit status: 0 every trial ran as configured, 2 bad input (nothing ran), 3 finished but some trials failed\n"
        "or lost client updates (the results table's error and lost columns say which).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(parser, None)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]", help="a grid axis (repeatable)")
    return parser


def grid_axes(axes: list[str]) -> dict[str, list[Any]]:
    """The ``--grid KEY=[values]`` axes, as {key: values}."""
    values: dict[str, list[Any]] = {}
    for axis in axes:
        key, sep, text = axis.partition("=")
        parsed = yaml.safe_load(text) if sep else None
        if not key or not isinstance(parsed, list) or not parsed:
            raise ConfigError(f"--grid {axis!r}: expected KEY=[V1, V2, ...], e.g. --grid methods.0.alpha=[0.1,0.5]")
        values[key] = parsed
    return values


def grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes, as {key: value}."""
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _assignments(point: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]


def check_points(config: Path, overrides: list[str], points: list[dict[str, Any]]) -> ExperimentConfig:
    """Validate every grid point before Ray starts; returns the first point's config."""
    configs = [load_config(config, overrides + _assignments(p)) for p in points]
    for cfg in configs:
        check_federated(cfg)
        if cfg.federated.compare:
            raise ConfigError(
                "federated.compare: a trial runs one strategy; unset it and grid the strategy instead, "
                "e.g. --grid federated.strategy=[fedavg,kd]"
            )
    return configs[0]


def run_trial(config: dict[str, Any], base: list[str], out: str, cwd: str) -> None:
    """One trial: a child simulation joined to the cluster; reports its summary numbers.

    The child runs in the sweep's working folder, so relative paths (node cache, MLflow store) mean
    what they mean to the user, not to the trial's folder.
    """
    from ray import tune  # in the trial's worker; the module itself stays light for --help

    from raykd.cluster import run_simulation_child

    folder = Path(out) / "-".join(f"{k.split('.')[-1]}={v}" for k, v in config.items())
    sets = [a for s in _assignments(config) for a in ("--set", s)]
    summary = run_simulation_child([*base, *sets], folder, cwd)
    (start,) = summary["starts"].values()
    metrics = {m: float("nan") if start.get(m) is None else start[m] for m in METRICS if m in start}
    tune.report({**metrics, "lost": summary["lost"] or ""})  # what rounds lost (exit 3 of the child), or nothing


def sweep(args: argparse.Namespace, cfg: ExperimentConfig, axes: dict[str, list[Any]]) -> pd.DataFrame:
    """Run every grid point as a trial, one at a time; write, print and return the results table."""
    import pandas as pd  # Tune and pandas load when the search starts, not for --help or a bad grid
    from ray import tune

    from raykd.cluster import WAITER_CPUS

    out = Path(cfg.output_dir).resolve() / f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    base = ["--config", str(args.config.resolve()), *(a for s in args.overrides for a in ("--set", s))]
    trainable = tune.with_parameters(run_trial, base=base, out=str(out), cwd=str(Path.cwd()))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": WAITER_CPUS}),
        param_space={key: tune.grid_search(values) for key, values in axes.items()},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0),
    )
    results = tuner.fit()
    rows = [
        {
            **r.config,
            **{m: v for m, v in (r.metrics or {}).items() if m in METRICS},
            "lost": (r.metrics or {}).get("lost"),
            "error": "" if r.error is None else last_line(str(r.error), 200),
        }
        for r in results
    ]
    table = pd.DataFrame(rows).sort_values(list(axes))  # grid order: test accuracy must not pick a winner
    table.to_csv(out / "results.csv", index=False)
    print(f"\n{table.to_string(index=False)}\n\nresults in {out}", flush=True)
    return table


def _search(args: argparse.Namespace) -> int:
    # Ray loads here, after parsing and validation: --help and bad grids never pay for it.
    from raykd.cluster import WAITER_CPUS, Capacity, check_flower_pool, connect_ray

    axes = grid_axes(args.grid)
    if not axes:
        raise ConfigError("--grid: give at least one axis, e.g. --grid federated.rounds=[3,5]")
    overrides = overrides_of(args)
    cfg = check_points(args.config, overrides, grid_points(axes))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    connect_ray(cfg, log_to_driver=True)
    check_flower_pool(cfg, Capacity.now(), beside=WAITER_CPUS)
    args.overrides = overrides
    code, line = exit_status(sweep(args, cfg, axes))
    if line:
        print(line, file=sys.stderr)
    return code


def exit_status(table: pd.DataFrame) -> tuple[int, str | None]:
    """3 and one line when some trials failed or lost client updates (finished, but not every point ran as
    configured: a script must be able to tell), else 0."""
    failed, lost = (table["error"].fillna("") != "").sum(), (table["lost"].fillna("") != "").sum()
    if not failed and not lost:
        return 0, None
    return (
        EXIT_ROUNDS_LOST,
        f"raykd: of {len(table)} trials, {failed} failed and {lost} lost client updates; see results.csv",
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _search(args))


if __name__ == "__main__":
    sys.exit(main())
