"""One line per finished (or failed, or retried) trial, so a long sweep shows where it is; each finished
trial's result is recorded in the sweep's folder as its line is printed (``state.record_finished``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray import tune

from raykd.config import cell_key
from raykd.sweep.state import record_finished
from raykd.tracking import trial_error


def describe(config: dict[str, Any]) -> str:
    """A trial as its cell, row label, knob values and seed."""
    arm = config["arm"]
    knobs = " ".join(f"{k}={v:g}" for k, v in arm.items() if k not in ("label", "method"))
    cell = " ".join(f"{a}={v}" for a, v in config.get("cell", {}).items())
    return f"{cell} {arm['label']} {knobs} seed={config['seed']}".replace("  ", " ").strip()


class Progress(tune.Callback):
    """Counts finished trials out of ``total``; the count survives a resume (Tune pickles callbacks)."""

    def __init__(self, total: int, out: Path, budgets: dict[str, int]) -> None:
        self.total, self.out, self.finished, self.started = total, out, 0, time.monotonic()
        self.budgets = budgets  # transfer epochs per cell: a trial that ended before them was stopped

    def get_state(self) -> dict[str, int]:
        return {"finished": self.finished}

    def set_state(self, state: dict[str, int]) -> None:
        self.finished, self.started = state["finished"], time.monotonic()

    def _line(self, trial: Any, outcome: str) -> None:
        self.finished += 1
        elapsed = time.monotonic() - self.started
        print(f"[{self.finished}/{self.total} {elapsed:5.0f}s] {describe(trial.config)}: {outcome}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result
        new = record_finished(self.out, trial.config, r)
        if "test_ppl" in r:  # a language model: perplexities, and the drop in cross-entropy
            outcome = f"test ppl {r['test_ppl']:.2f} (gain {r['gain']:+.3f} nats/token), val ppl {r['val_ppl']:.2f}"
        else:
            outcome = (
                f"test {100 * r['test_acc']:.1f}% (gain {100 * r['gain']:+.1f} pts), val {100 * r['val_acc']:.1f}%"
            )
        if r.get("epoch", 0) < self.budgets[cell_key(trial.config.get("cell", {}))]:
            outcome += f" (stopped by ASHA at epoch {r.get('epoch', 0)})"
        self._line(trial, outcome if new else f"{outcome} (recorded before the interruption; not run again)")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"retrying {describe(trial.config)} after failure {trial.num_failures}: {trial_error(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, f"FAILED: {trial_error(trial)}")
