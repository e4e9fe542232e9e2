"""How the sweep searches: which trials run as one Ray Tune experiment (a *stage*), and each stage's searcher
and scheduler.

``tune.search: grid`` with ``tune.scheduler: fifo`` is one stage, every row at every grid point. Otherwise each
searched row (more than one setting) of each cell is its own stage, so that a searcher or ASHA only ever
compares settings of one row in one cell; the rows with one setting share a first stage. ``random`` and
``optuna`` draw ``tune.num_samples`` settings through Optuna's samplers (Ray Tune's ``OptunaSearch``), and
``SeedGroups`` runs each drawn setting at every seed, telling the sampler the mean over the seeds: a setting
is what the report chooses, and its seeds start from different students, so one seed's score would mostly
rank the seed. ASHA decides per setting, on ``val_gain`` (each seed's start subtracted), for the same reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from raykd.config import Cell, ExperimentConfig
from raykd.files import safe_component
from raykd.methods.schema import KnobRange, MethodConfig
from raykd.report import LOWER_IS_BETTER

#: The folder of the first stage (every row of a grid sweep; the one-setting rows otherwise).
FIRST_STAGE = "tune"
#: What ASHA ranks settings by: the gain on the global validation split (each seed's start subtracted).
ASHA_METRIC = "val_gain"


def arm(row: MethodConfig, setting: dict[str, Any]) -> dict[str, Any]:
    """A trial's ``arm``: the method row and one concrete setting of its knobs."""
    return {"label": row.display(), "method": row.name, **setting}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Stage:
    """One Ray Tune experiment of the sweep: its folder name, search space, searcher, scheduler and trial count."""

    name: str
    space: dict[str, Any]
    trials: int
    searcher: Searcher | None = None
    scheduler: TrialScheduler | None = None


def stages(cfg: ExperimentConfig, cells: list[Cell]) -> list[Stage]:
    """The sweep's stages in a fixed order (``--resume`` finds each one's folder again)."""
    adaptive = cfg.tune.search != "grid" or cfg.tune.scheduler != "fifo"
    fixed = [m for m in cfg.methods if not (adaptive and m.searched())]
    out = []
    if fixed:
        arms = [arm(m, s) for m in fixed for s in m.grid()]
        out.append(Stage(FIRST_STAGE, grid_space(cfg, arms, cells), len(arms) * len(cfg.seeds) * len(cells)))
    searched = [(cell, m) for cell in cells for m in cell.config.methods if adaptive and m.searched()]
    for cell, row in searched:
        name = safe_component(f"search-{cell.key or 'all'}-{row.display()}")
        out.append(searched_stage(cell, row, name))
    return out


def grid_space(cfg: ExperimentConfig, arms: list[dict[str, Any]], cells: list[Cell]) -> dict[str, Any]:
    """Every arm at every seed, in every cell: Tune's grid."""
    space = {"arm": tune.grid_search(arms), "seed": tune.grid_search(cfg.seeds)}
    if cfg.axes:
        space["cell"] = tune.grid_search([cell.variants for cell in cells])
    return space


def searched_stage(cell: Cell, row: MethodConfig, name: str) -> Stage:
    """One searched row in one cell: its grid (``search: grid``) or its sampler's draws, with its scheduler."""
    cfg = cell.config
    scheduler = asha(cfg) if cfg.tune.scheduler == "asha" else FIFOScheduler()
    if cfg.tune.search == "grid":
        arms = [arm(row, s) for s in row.grid()]
        return Stage(name, grid_space(cfg, arms, [cell]), len(arms) * len(cfg.seeds), scheduler=scheduler)
    samples = cfg.tune.num_samples
    groups = SeedGroups(sampler(cfg, row), row, cell, cfg.seeds, samples, cfg.tune.select_on)
    return Stage(name, {}, samples * len(cfg.seeds), searcher=groups, scheduler=scheduler)


def asha(cfg: ExperimentConfig) -> SettingASHA:
    """ASHA over transfer epochs (one report per epoch), deciding per setting (below)."""
    epochs = cfg.transfer.train.epochs
    return SettingASHA(epochs, min(cfg.tune.grace_epochs, epochs), cfg.tune.reduction_factor)


class SettingASHA(FIFOScheduler):
    """ASHA's rule applied to settings rather than trials: at each rung (grace_epochs x reduction_factor^k epochs)
    a setting goes on while the mean ``val_gain`` of its seeds that reached the rung is among the top
    1/reduction_factor of the settings' means recorded there; once behind, every trial of the setting stops.

    Per-trial ASHA would stop some seed of almost every setting (a seed's noise is as large as a setting's
    effect here), and a setting missing seeds cannot be compared with the others, so it could never be chosen.
    """

    def __init__(self, max_t: int, grace: int, reduction_factor: float) -> None:
        super().__init__()
        self.rungs = [grace * reduction_factor**k for k in range(int(math.log(max_t / grace, reduction_factor)) + 1)]
        self.rungs = [rung for rung in self.rungs if rung < max_t]
        self.keep = 1 / reduction_factor
        self.recorded: dict[float, dict[str, dict[int, float]]] = {rung: {} for rung in self.rungs}
        self.behind: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        setting = json.dumps([trial.config.get("cell"), trial.config["arm"]], sort_keys=True, default=str)
        if setting in self.behind:
            return TrialScheduler.STOP
        reached = [rung for rung in self.rungs if result.get("training_iteration", 0) >= rung]
        seed = trial.config["seed"]
        if not reached or ASHA_METRIC not in result or seed in self.recorded[reached[-1]].get(setting, {}):
            return TrialScheduler.CONTINUE
        rung = self.recorded[reached[-1]]
        rung.setdefault(setting, {})[seed] = float(result[ASHA_METRIC])
        means = {key: float(np.mean(list(seeds.values()))) for key, seeds in rung.items()}
        if means[setting] < np.percentile(list(means.values()), 100 * (1 - self.keep)):
            self.behind.add(setting)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


def domain(values: list[Any] | KnobRange, integer: bool) -> Any:
    """A knob's Tune domain: a list is a choice among its values, a range a (log-)uniform draw."""
    if not isinstance(values, KnobRange):
        return tune.choice(values)
    low, high = values.low, values.high
    if integer:
        return tune.lograndint(int(low), int(high) + 1) if values.log else tune.randint(int(low), int(high) + 1)
    return tune.loguniform(low, high) if values.log else tune.uniform(low, high)


def sampler(cfg: ExperimentConfig, row: MethodConfig) -> Searcher:
    """Ray Tune's OptunaSearch over the row's varying knobs: TPE (``optuna``) or uniform draws (``random``).

    TPE's first draws are random; with a handful of samples Optuna's default of 10 would leave none to TPE, so
    a third of the samples (at least 2) start it.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per stage: raykd prints what it drew
    space = {k: domain(getattr(row, k), isinstance(row.first()[k], int)) for k in varying(row)}
    seed, samples = cfg.tune.search_seed, cfg.tune.num_samples
    draws = (
        optuna.samplers.RandomSampler(seed=seed)
        if cfg.tune.search == "random"
        else optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, samples // 3))
    )
    mode = "min" if cfg.tune.select_on in LOWER_IS_BETTER else "max"
    return OptunaSearch(OptunaSearch.convert_search_space(space), metric="score", mode=mode, sampler=draws)


def varying(row: MethodConfig) -> list[str]:
    """The knobs a sampler draws: ranges, and lists of more than one value."""
    return [k for k in row.knobs() if isinstance(getattr(row, k), KnobRange) or len(getattr(row, k)) > 1]


class SeedGroups(Searcher):
    """Each setting the sampler draws runs as one trial per seed; the sampler learns the mean over those seeds.

    A setting drawn again (TPE repeats points of a list) is not run again: the sampler is told the mean it
    already has (or nothing, while that setting still runs) and draws anew, up to ``REDRAWS`` times.
    """

    REDRAWS = 20

    def __init__(
        self, inner: Searcher, row: MethodConfig, cell: Cell, seeds: list[int], samples: int, metric: str
    ) -> None:
        super().__init__(metric=metric, mode="min" if metric in LOWER_IS_BETTER else "max")
        self.inner, self.seeds, self.samples = inner, list(seeds), samples
        self.fixed = {k: v for k, v in row.first().items() if k not in varying(row)}
        self.row = {"label": row.display(), "method": row.name}  # type: ignore[attr-defined]
        self.cell = cell.variants
        self.queue: list[tuple[str, dict[str, Any]]] = []
        self.members: dict[str, str] = {}  # Tune trial id -> the sampler's id of its setting
        self.scores: dict[str, list[float]] = {}  # the sampler's id -> its seeds' scores so far
        self.means: dict[str, float | None] = {}  # the sampler's id -> its mean over seeds, once all ended
        self.seen: dict[str, str] = {}  # a drawn setting (JSON) -> the sampler's id that runs it
        self.drawn = self.asked = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is the row's, given to the sampler at construction

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self.queue:
            if self.drawn >= self.samples:
                return Searcher.FINISHED
            drawn = self.draw()
            if not isinstance(drawn, tuple):
                return drawn  # None: wait for results; FINISHED
            self.drawn += 1
            setting_id, arm = drawn[0], {**self.row, **self.fixed, **drawn[1]}
            cell = {"cell": self.cell} if self.cell else {}
            self.queue = [(setting_id, {"arm": arm, "seed": seed, **cell}) for seed in self.seeds]
        setting_id, config = self.queue.pop(0)
        self.members[trial_id] = setting_id
        return config

    def draw(self) -> tuple[str, dict[str, Any]] | str | None:
        """The sampler's next setting that has not run yet (after ``REDRAWS`` repeats, a repeat)."""
        for _ in range(self.REDRAWS):
            setting_id = f"setting{self.asked}"
            self.asked += 1
            drawn = self.inner.suggest(setting_id)
            if not isinstance(drawn, dict):
                return drawn
            key = json.dumps(drawn, sort_keys=True)
            if key not in self.seen:
                self.seen[key] = setting_id
                return setting_id, drawn
            known = self.means.get(self.seen[key])
            self.inner.on_trial_complete(setting_id, None if known is None else {"score": known}, known is None)
        return setting_id, drawn

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        setting_id = self.members.pop(trial_id, None)
        if setting_id is None:
            return
        score = (result or {}).get(self.metric)
        self.scores.setdefault(setting_id, []).append(math.nan if error or score is None else float(score))
        done = self.scores[setting_id]
        if len(done) == len(self.seeds):
            finite = [v for v in done if not math.isnan(v)]
            self.means[setting_id] = sum(finite) / len(finite) if finite else None
            scored = {"score": self.means[setting_id]} if finite else None
            self.inner.on_trial_complete(setting_id, scored, error=not finite)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(cloudpickle.dumps(self.__dict__))

    def restore(self, checkpoint_path: str) -> None:
        self.__dict__.update(cloudpickle.loads(Path(checkpoint_path).read_bytes()))
