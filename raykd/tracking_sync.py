"""``python -m raykd.tracking_sync SWEEP_FOLDER``: fill MLflow in from a finished sweep's complete local results.

A tracking server that died mid-sweep leaves its parent run RUNNING and some trial runs missing, while the
sweep's folder holds everything (``finished/``: each trial's final metrics; the tables, plots and students).
Run this once the server is back: every finished trial without a FINISHED child run gets one, the parent run
gets the files and students it lacks and ends FINISHED. Running it again writes nothing (idempotent).

Exit status: 0 done (or nothing to do), 2 bad input or a store that cannot take runs (one line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raykd.cli import run_command
from raykd.config import load_config
from raykd.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raykd.tracking_sync",
        description="Fill MLflow in from a finished sweep's folder after the tracking server failed during it.",
    )
    parser.add_argument("sweep", type=Path, help="the sweep's output folder, runs/<name>-<time>/")
    parser.add_argument("--tracking-uri", help="the store to fill (default: the one the sweep used, in sweep.json)")
    return parser


def chosen_students(out: Path) -> dict[str, Path]:
    """The students the sweep kept (``students/[cell/]row/seed*.pt``), the best over seeds of each row."""
    from raykd.sweep.students import best_of

    folders = {p.parent for p in (out / "students").rglob("seed*.pt")}
    return {str(f.relative_to(out / "students")): best_of(sorted(f.glob("seed*.pt"))) for f in sorted(folders)}


def sync(out: Path, uri: str | None = None) -> tuple[int, int]:
    """Fill the store in from the finished sweep in ``out``; (trial runs written, parent items logged)."""
    from raykd.sweep.state import finished_trials  # MLflow and the sweep shell load after parsing
    from raykd.tracking import check_reachable, check_run_exists
    from raykd.tracking_backfill import fill_in_trials, finish_parent

    out = out.resolve()
    if not (out / "results.md").is_file():
        raise ConfigError(f"sweep {out}: holds no results.md (not a finished sweep); finish it with --resume first")
    try:
        record = json.loads((out / "sweep.json").read_text())
    except (OSError, ValueError):
        raise ConfigError(f"sweep {out}: sweep.json is missing or unreadable; expected a sweep's folder") from None
    uri = uri or str(record["uri"])
    check_reachable(uri)
    check_run_exists(uri, record["parent_run_id"], f"sweep {out}")
    sweep = load_config(out / "config.yaml").name
    runs = fill_in_trials(uri, record["parent_run_id"], out.name, finished_trials(out))
    names = ("config.yaml", "trials.csv", "paired.csv", "federated.csv", "results.md")
    files = [(out / n, None) for n in names if (out / n).is_file()]
    files += [(p, "plots") for p in sorted((out / "plots").glob("*.png"))]
    items = finish_parent(uri, record["parent_run_id"], files, sweep, chosen_students(out))
    print(f"raykd: MLflow at {uri}: {runs} trial run(s) filled in, {items} sweep item(s) logged; sweep run FINISHED")
    return runs, items


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 when the store holds the sweep, 2 with one line when it cannot."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        sync(args.sweep, args.tracking_uri)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
