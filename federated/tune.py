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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import federated  # noqa: F401  (sets Flower's environment for the child simulations)
from raykd.config import ExperimentConfig, load_config
from raykd.errors import ConfigError
from raykd.tune import connect_ray

#: CPU a trial reserves for itself: it only waits on its child simulation.
TRIAL_CPUS = 0.01
METRICS = ("final_test_acc", "rounds_to_target", "failed_clients")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m federated.tune",
        description="Grid-search federated knobs with Ray Tune; every trial is one federated simulation.",
        epilog="example:\n  python -m federated.tune --config tune_configs/federated_kd.yaml "
        "--grid federated.kd_alpha=[0.25,0.5,0.75] --grid federated.temperature=[2,4] --set federated.client_cpus=0.6",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=[V1,V2]", help="a grid axis (repeatable)")
    parser.add_argument("--address", help="join this Ray cluster (same as --set ray.address=ADDR)")
    return parser


def grid_axes(axes: list[str]) -> dict[str, list[Any]]:
    """The ``--grid KEY=[values]`` axes, as {key: values}."""
    values: dict[str, list[Any]] = {}
    for axis in axes:
        key, sep, text = axis.partition("=")
        parsed = yaml.safe_load(text) if sep else None
        if not key or not isinstance(parsed, list) or not parsed:
            raise ConfigError(f"--grid {axis!r}: expected KEY=[V1, V2, ...], e.g. --grid federated.kd_alpha=[0.1,0.5]")
        values[key] = parsed
    return values


def grid_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes, as {key: value}."""
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _assignments(point: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in point.items()]


def check_points(config: Path, overrides: list[str], points: list[dict[str, Any]]) -> ExperimentConfig:
    """Validate every grid point before Ray starts; returns the first point's config."""
    from federated.task import check

    configs = [load_config(config, overrides + _assignments(p)) for p in points]
    for cfg in configs:
        check(cfg)
    return configs[0]


def check_fit(cfg: ExperimentConfig) -> None:
    """A trial's child simulation must be able to place Flower's whole pool beside the trial's sliver."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    pool = int(cpus / cfg.federated.client_cpus) * cfg.federated.client_cpus
    if pool + TRIAL_CPUS > cpus:
        raise ConfigError(
            f"federated.client_cpus: {cfg.federated.client_cpus:g} makes Flower's pool take {pool:g} of the "
            f"cluster's {cpus:g} CPUs, leaving no room for the trial ({TRIAL_CPUS} CPU); pick a value that does "
            f"not divide {cpus:g} exactly, e.g. 0.6"
        )


def run_trial(config: dict[str, Any], base: list[str], address: str, out: str, cwd: str) -> None:
    """One trial: a child simulation joined to the cluster; reports its summary numbers.

    The child runs in the sweep's working folder, so relative paths (node cache, MLflow store) mean
    what they mean to the user, not to the trial's folder.
    """
    from ray import tune

    folder = Path(out) / "-".join(f"{k.split('.')[-1]}={v}" for k, v in config.items())
    sets = [a for s in _assignments(config) for a in ("--set", s)]
    (start,) = simulate_child([*base, *sets], address, folder, cwd)["starts"].values()
    tune.report({m: start[m] if start[m] is not None else float("nan") for m in METRICS})


def simulate_child(args: list[str], address: str, folder: Path, cwd: str) -> dict[str, Any]:
    """``python -m federated.simulate ARGS`` as a child driver joined to ``address``; its summary.json.

    Its records go under ``folder``; a failed simulation raises with the last line it printed.
    """
    command = [sys.executable, "-m", "federated.simulate", *args, "--address", address, "--set", f"output_dir={folder}"]
    done = subprocess.run(command, cwd=cwd, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"simulation exited with {done.returncode}: {last}")
    (run,) = folder.iterdir()
    return json.loads((run / "summary.json").read_text())


def sweep(args: argparse.Namespace, cfg: ExperimentConfig, axes: dict[str, list[Any]], address: str) -> Path:
    """Run every grid point as a trial, one at a time; write and print the results table."""
    import pandas as pd
    from ray import tune

    out = Path(cfg.output_dir).resolve() / f"{cfg.name}-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    base = ["--config", str(args.config.resolve()), *(a for s in args.overrides for a in ("--set", s))]
    trainable = tune.with_parameters(run_trial, base=base, address=address, out=str(out), cwd=str(Path.cwd()))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": TRIAL_CPUS}),
        param_space={key: tune.grid_search(values) for key, values in axes.items()},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0),
    )
    results = tuner.fit()
    rows = [
        {
            **r.config,
            **{m: (r.metrics or {}).get(m) for m in METRICS},
            "error": "" if r.error is None else str(r.error).strip().splitlines()[-1][:200],
        }
        for r in results
    ]
    table = pd.DataFrame(rows).sort_values(list(axes))  # grid order: test accuracy must not pick a winner
    table.to_csv(out / "results.csv", index=False)
    print(f"\n{table.to_string(index=False)}\n\nresults in {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; bad input is one line on stderr and exit status 2."""
    import ray

    args = build_parser().parse_args(argv)
    try:
        axes = grid_axes(args.grid)
        if not axes:
            raise ConfigError("--grid: give at least one axis, e.g. --grid federated.kd_alpha=[0.1,0.5]")
        overrides = args.overrides + ([f"ray.address={args.address}"] if args.address else [])
        cfg = check_points(args.config, overrides, grid_points(axes))
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        connect_ray(cfg, log_to_driver=True)
        check_fit(cfg)
    except ConfigError as err:
        print(f"raykd: error: {err}", file=sys.stderr)
        return 2
    sweep(args, cfg, axes, ray.get_runtime_context().gcs_address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
