"""What tuned KD costs under each search, against the full grid: trial-epochs, wall time, the chosen setting and
its test gain paired seed by seed with the grid's choice.

    python benchmarks/search_cost.py                 # both studies, every search (about 15 min on 2 cores)
    python benchmarks/search_cost.py --study default --search grid optuna

Two studies, only their tuned row (kd over T in {1, 2, 4, 8} x alpha in {0.1, 0.25, 0.5, 0.75}, 10 transfer
epochs), teacher logits cached:
- ``default``: tune_configs/default.yaml (Dirichlet 0.5, pool transfer, seeds 0-2);
- ``paper``: tune_configs/paper_study.yaml's hardest non-IID cell (2 classes per node, pool transfer, seeds 0-4).
Searches, over the same seeds: ``grid`` (16 settings), ``asha`` (the grid with per-setting ASHA: grace 2
epochs, reduction factor 3), ``optuna`` (TPE, 5 of the same 16 points; sampler seeds 0, 1, 2, since one
search is one draw), ``optuna+asha``, ``optuna ranges`` (TPE, 5 settings from T in [1, 8] on a log scale and
alpha in [0.1, 0.75]) and ``random`` (5 of the 16 points, uniformly). The goal of
issue 26: a search whose choice's test gain is the grid's (the paired 95% interval of the difference covers
0) at 35% or less of the grid's trial-epochs. Every sweep runs in this process on a 2-CPU Ray, under a
temporary folder; the first one of each study also pre-trains its node models (timed apart).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import raykd  # noqa: E402
from raykd.config import ExperimentConfig  # noqa: E402
from raykd.paired import t_interval  # noqa: E402
from raykd.report import markdown  # noqa: E402

KNOBS = ["temperature", "alpha"]
ROW = {"name": "kd", "label": "kd-tuned", "temperature": [1, 2, 4, 8], "alpha": [0.1, 0.25, 0.5, 0.75]}
STUDIES = {
    "default": ("default.yaml", ["seeds=[0, 1, 2]"]),
    "paper": (
        "paper_study.yaml",
        ["axes={}", "partition.scheme=pathological", "partition.classes_per_node=2", "transfer.set=pool"]
        + ["federated.after_sweep=false"],
    ),
}
RANGES = ["methods.0.temperature={low: 1, high: 8, log: true}", "methods.0.alpha={low: 0.1, high: 0.75}"]
OPTUNA = ["tune.search=optuna", "tune.num_samples=5"]
SEARCHES = {
    "grid": [],
    "asha": ["tune.scheduler=asha"],
    **{f"optuna s{seed}": [*OPTUNA, f"tune.search_seed={seed}"] for seed in range(3)},
    **{f"optuna+asha s{seed}": [*OPTUNA, f"tune.search_seed={seed}", "tune.scheduler=asha"] for seed in range(3)},
    "optuna ranges s0": [*OPTUNA, *RANGES],
    "random s0": ["tune.search=random", "tune.num_samples=5"],
}


def config(study: str, search: str, work: Path, extra: tuple[str, ...] = ()) -> ExperimentConfig:
    """The study cut to its tuned row, with the search's settings (and ``extra``), writing under ``work``."""
    name, overrides = STUDIES[study]
    common = [
        f"methods=[{ROW}]",
        "teacher.mode=cache",
        "tune.grace_epochs=2",
        "tune.reduction_factor=3",
        f"name={study}-{search.replace('+', '-').replace(' ', '-')}",
        f"output_dir={work / 'runs'}",
        f"nodes.cache_dir={work / 'cache'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
    ]
    return raykd.load_config(REPO / "tune_configs" / name, [*overrides, *common, *SEARCHES[search], *extra])


def chosen_gains(study: raykd.Study) -> tuple[dict[str, float], pd.Series]:
    """The tuned row's chosen setting and its test gain per seed."""
    setting = study.chosen["kd-tuned"]
    trials = study.trials[(study.trials["label"] == "kd-tuned") & (study.trials["status"] == "ok")]
    mine = trials[(trials["temperature"] == setting["temperature"]) & (trials["alpha"] == setting["alpha"])]
    return setting, mine.set_index("seed")["gain"].sort_index()


def measure(study: str, searches: list[str], work: Path) -> list[dict[str, str]]:
    """Every search of one study; the grid first, since each other search is paired with its choice."""
    started = time.perf_counter()
    raykd.run(config(study, "grid", work, ("methods=[{name: ce}]", "transfer.train.epochs=1", "name=warm-up")))
    print(f"{study}: node models and teacher logits in {time.perf_counter() - started:.0f} s", flush=True)
    rows, grid = [], None
    for search in ["grid", *(s for s in searches if s != "grid")]:
        started = time.perf_counter()
        result = raykd.run(config(study, search, work))
        wall = time.perf_counter() - started
        setting, gains = chosen_gains(result)
        epochs = int(result.trials["epochs"].fillna(0).sum())
        grid = (epochs, gains) if search == "grid" else grid
        diff = t_interval((gains - grid[1]).to_numpy())
        rows.append(
            {
                "study": study,
                "search": search,
                "trials": str(len(result.trials)),
                "trial-epochs": f"{epochs} ({100 * epochs / grid[0]:.0f}% of grid)",
                "wall s": f"{wall:.0f}",
                "chosen (T, alpha)": f"{setting['temperature']:g}, {setting['alpha']:g}",
                "test gain (pts)": f"{100 * gains.mean():+.1f} ± {100 * gains.std(ddof=0):.1f}",
                "minus grid's choice [95% CI]": "-"
                if search == "grid"
                else f"{100 * diff.mean:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}]",
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    parser.add_argument("--search", nargs="+", choices=list(SEARCHES), default=list(SEARCHES))
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="raykd-search-") as folder:
        rows = [row for study in args.study for row in measure(study, args.search, Path(folder))]
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
