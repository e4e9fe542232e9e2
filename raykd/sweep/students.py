"""The sweep's product: the distilled students of the settings the summary table reports.

Every trial saves its final student under ``students/.trials/``; once the report has chosen each method
row's setting (on validation), that setting's students move to ``students/[<cell>/]<row>/seed<S>.pt``
and the students of the settings that were not chosen are deleted, so disk use stays bounded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from raykd.config import ExperimentConfig, cell_key
from raykd.files import safe_component
from raykd.lm.hf import pretrained_folder
from raykd.students import read_student

TRIALS = ".trials"


def setting_name(setting: dict[str, Any]) -> str:
    return "-".join(f"{k}={v:g}" for k, v in setting.items()) or "default"


def row_name(cell: dict[str, str], label: str) -> str:
    """A method row's name in a study's results: ``<cell>/<row>`` with axes, the row label without."""
    return f"{cell_key(cell)}/{label}" if cell else label


def trial_student(out: Path, cell: dict[str, str], label: str, setting: dict[str, Any], seed: int) -> Path:
    """Where a trial saves its final student (resumed sweeps find finished trials' students there)."""
    folder = out / "students" / TRIALS / safe_component(cell_key(cell) or "-") / safe_component(label)
    return folder / safe_component(setting_name(setting)) / f"seed{seed}.pt"


def chosen_student(out: Path, cell: dict[str, str], label: str, seed: int) -> Path:
    where = [safe_component(cell_key(cell))] if cell else []
    return out.joinpath("students", *where, safe_component(label), f"seed{seed}.pt")


def keep_chosen(cfg: ExperimentConfig, out: Path, best: pd.DataFrame) -> dict[str, list[Path]]:
    """Move the chosen settings' students into place, drop the rest; returns the files per ``[cell/]row``."""
    axes = list(cfg.axes)
    kept: dict[str, list[Path]] = {}
    for _, row in best.iterrows():
        cell = {a: str(row[a]) for a in axes}
        label = str(row["label"])
        setting = {k: row[k] for k in cfg.method(label).knobs()}
        for seed in cfg.seeds:
            source = trial_student(out, cell, label, setting, seed)
            if source.is_file():
                target = chosen_student(out, cell, label, seed)
                target.parent.mkdir(parents=True, exist_ok=True)
                source.replace(target)
                if pretrained_folder(source).is_dir():  # a transformers student's save_pretrained folder
                    shutil.rmtree(pretrained_folder(target), ignore_errors=True)
                    pretrained_folder(source).replace(pretrained_folder(target))
                kept.setdefault(row_name(cell, label), []).append(target)
    shutil.rmtree(out / "students" / TRIALS, ignore_errors=True)
    return kept


def best_of(paths: list[Path]) -> Path:
    """The student with the best validation score among one row's seeds (never chosen on test): the lowest
    perplexity for a language model, else the highest accuracy."""

    def score(path: Path) -> float:
        metrics = read_student(path)["info"]["metrics"]
        return -metrics["val_ppl"] if "val_ppl" in metrics else metrics["val_acc"]

    return max(paths, key=score)


def chosen_settings(cfg: ExperimentConfig, summary: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each row's setting as the summary reports it (chosen on validation, never on test), by ``row_name``."""
    chosen = {}
    for _, row in summary.iterrows():
        label = str(row["label"])
        chosen[row_name({a: str(row[a]) for a in cfg.axes}, label)] = {k: row[k] for k in cfg.method(label).knobs()}
    return chosen
